"""Files written all at once or not at all."""

import json
import os
import tempfile
from typing import IO, Any, Callable

__all__ = ["atomic_write", "write_json_atomic", "read_json"]


def atomic_write(path: str, write_fn: Callable[[IO[bytes]], None], mode: str = "wb") -> None:
    """
    Writes ``path`` all at once or not at all: ``write_fn(f)`` writes to a temporary file next
    to ``path``, which is fsynced and then renamed over ``path``. If ``write_fn`` raises, the
    temporary file is removed and ``path`` is left as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(
        dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
    )
    os.close(fd)  # reopened by name: writers such as tifffile want a file whose .name is a path
    try:
        with open(tmp_path, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        try:
            os.remove(tmp_path)
        except FileNotFoundError:
            pass
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


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON with :func:`atomic_write`."""
    atomic_write(path, lambda f: json.dump(obj, f), mode="w")


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
