"""Files written all at once or not at all."""

import errno
import json
import logging
import os
import tempfile
from typing import IO, Any, Callable, Optional, Set

__all__ = ["atomic_write", "write_json_atomic", "read_json", "keep_aside"]

# Files this process wrote with keep_earlier=True: writing them again replaces them (a run's
# periodic evaluations refresh its own results); a file from before is kept aside instead.
_WRITTEN_BY_THIS_PROCESS: Set[str] = set()


def keep_aside(path: str) -> Optional[str]:
    """
    Renames an existing ``path`` (``dir/name.ext``) to the first free ``dir/name.<k>.ext``,
    k = 1, 2, ...; returns that name, or None when ``path`` does not exist.
    """
    if not os.path.lexists(path):
        return None
    root, ext = os.path.splitext(path)
    k = 1
    while os.path.lexists(f"{root}.{k}{ext}"):
        k += 1
    os.replace(path, f"{root}.{k}{ext}")
    return f"{root}.{k}{ext}"


def atomic_write(
    path: str,
    write_fn: Callable[[IO[bytes]], None],
    mode: str = "wb",
    keep_earlier: bool = False,
) -> None:
    """
    Writes ``path`` all at once or not at all: ``write_fn(f)`` writes to a temporary file next
    to ``path``, which is fsynced and then renamed over ``path``. If ``write_fn`` raises, the
    temporary file is removed and ``path`` is left as it was; a full disk ends in
    ``OSError(ENOSPC)`` naming ``path`` ("No space left on device: '<path>'"), whatever the
    writer raised.

    Args:
        keep_earlier: results that must never be overwritten silently (evaluation outputs):
            a ``path`` that this process did not write itself is first renamed by
            :func:`keep_aside` (``name.<k>.ext``), which is logged.
    """
    abspath = os.path.abspath(path)
    directory = os.path.dirname(abspath)
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(
        dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
    )
    os.close(fd)  # reopened by name: writers such as tifffile want a file whose .name is a path
    try:
        # mkstemp makes the file 0600; outputs get the user's usual permissions (0666 - umask)
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_earlier and abspath not in _WRITTEN_BY_THIS_PROCESS:
            kept = keep_aside(path)
            if kept:
                logging.getLogger(__name__).warning(
                    f"{path} holds the results of an earlier run: kept as {kept}"
                )
        os.replace(tmp_path, path)
        if keep_earlier:
            _WRITTEN_BY_THIS_PROCESS.add(abspath)
    except BaseException as e:
        try:
            os.remove(tmp_path)
        except FileNotFoundError:
            pass
        if _disk_full(e):  # torch's writer hides it behind a RuntimeError
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from e
        raise
    # Make the rename itself durable; not every filesystem allows fsync on a directory.
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore
    os.umask(mask)
    return mask


def _disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) is a full disk or quota."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def write_json_atomic(path: str, obj: Any, keep_earlier: bool = False) -> None:
    """Writes ``obj`` as JSON with :func:`atomic_write` (``keep_earlier``: see there)."""
    atomic_write(path, lambda f: json.dump(obj, f), mode="w", keep_earlier=keep_earlier)


def read_json(path: str, what: str = "JSON") -> Any:
    """
    Reads a JSON file; a missing file or invalid JSON raises an error naming the file and
    ``what`` it should have been (e.g. "COCO-3D json", "class map").
    """
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what} file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
