"""Logging setup for det3d runs, and helpers to log a message only every n calls or seconds."""

import atexit
import functools
import logging
import os
import sys
import time
from collections import Counter
from typing import Optional

__all__ = ["setup_logger", "log_first_n", "log_every_n", "log_every_n_seconds"]

_FORMAT = "[%(asctime)s %(name)s %(levelname)s]: %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"


def setup_logger(
    output: Optional[str] = None,
    distributed_rank: int = 0,
    *,
    name: str = "det3d",
    abbrev_name: Optional[str] = None,
) -> logging.Logger:
    """
    Sets up logger ``name`` to print to the console (rank 0 only) and to a file (every rank).

    Args:
        output (str): a file name ending in ``.txt`` or ``.log``, or a directory (the log goes to
            ``output/log.txt``); None: no file. Ranks other than 0 write to ``<file>.rank<k>``.
        distributed_rank (int): rank of this process.
        name (str): logger to set up; its children (``det3d.engine`` ...) inherit the handlers.
        abbrev_name (str): shorter name shown in console lines (default ``"d3"`` for det3d).

    Returns:
        logging.Logger: the logger.
    """
    logger = logging.getLogger(name)
    # Setting a logger up again (a second run in one process) replaces its handlers, so that no
    # message is printed twice and no file of an earlier run keeps receiving lines.
    for handler in [h for h in logger.handlers if getattr(h, "_det3d_setup", False)]:
        logger.removeHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if abbrev_name is None:
        abbrev_name = "d3" if name == "det3d" else name

    if distributed_rank == 0:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setLevel(logging.DEBUG)
        console.setFormatter(
            _AbbrevFormatter(_FORMAT, datefmt=_DATEFMT, root=name, abbrev=abbrev_name)
        )
        console._det3d_setup = True
        logger.addHandler(console)

    if output is not None:
        if output.endswith(".txt") or output.endswith(".log"):
            filename = output
        else:
            filename = os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        fh = logging.StreamHandler(_cached_log_stream(filename))
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATEFMT))
        fh._det3d_setup = True
        logger.addHandler(fh)
    return logger


class _AbbrevFormatter(logging.Formatter):
    """Shortens the logger name in console lines (``det3d.engine.hooks`` -> ``d3.engine.hooks``)."""

    def __init__(self, *args, root: str, abbrev: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._root = root + "."
        self._abbrev = abbrev + "." if abbrev else ""

    def formatMessage(self, record: logging.LogRecord) -> str:
        name = record.name
        record.name = name.replace(self._root, self._abbrev, 1)
        try:
            return super().formatMessage(record)
        finally:
            record.name = name


@functools.lru_cache(maxsize=None)
def _cached_log_stream(filename: str):
    # Opened once per file, so that several loggers can share it; closed at exit.
    stream = open(filename, "a", buffering=1)  # line-buffered: a crash loses no finished line
    atexit.register(stream.close)
    return stream


def _find_caller():
    """The caller of the log_* helper, as (module name, (file, line, function))."""
    frame = sys._getframe(2)
    while frame:
        code = frame.f_code
        if os.path.join("utils", "logger.") not in code.co_filename:
            mod_name = frame.f_globals["__name__"]
            if mod_name == "__main__":
                mod_name = "det3d"
            return mod_name, (code.co_filename, frame.f_lineno, code.co_name)
        frame = frame.f_back
    return "det3d", ("", 0, "")


_LOG_COUNTER: Counter = Counter()
_LOG_TIMER: dict = {}


def log_first_n(
    lvl: int, msg: str, n: int = 1, *, name: Optional[str] = None, key="caller"
) -> None:
    """
    Logs ``msg`` only the first ``n`` times it is reached.

    Args:
        key (str or tuple[str]): what counts as "the same message": ``"caller"`` (the calling
            line), ``"message"``, or both.
    """
    if isinstance(key, str):
        key = (key,)
    assert len(key) > 0 and set(key) <= {"caller", "message"}, key
    caller_module, caller_key = _find_caller()
    hash_key = ()
    if "caller" in key:
        hash_key = hash_key + caller_key
    if "message" in key:
        hash_key = hash_key + (msg,)
    _LOG_COUNTER[hash_key] += 1
    if _LOG_COUNTER[hash_key] <= n:
        logging.getLogger(name or caller_module).log(lvl, msg)


def log_every_n(lvl: int, msg: str, n: int = 1, *, name: Optional[str] = None) -> None:
    """Logs ``msg`` the first time and then every ``n``-th time this line is reached."""
    caller_module, key = _find_caller()
    _LOG_COUNTER[key] += 1
    if n == 1 or _LOG_COUNTER[key] % n == 1:
        logging.getLogger(name or caller_module).log(lvl, msg)


def log_every_n_seconds(lvl: int, msg: str, n: float = 1, *, name: Optional[str] = None) -> None:
    """Logs ``msg`` at most once every ``n`` seconds from this line."""
    caller_module, key = _find_caller()
    last_logged = _LOG_TIMER.get(key, None)
    current_time = time.time()
    if last_logged is None or current_time - last_logged >= n:
        logging.getLogger(name or caller_module).log(lvl, msg)
        _LOG_TIMER[key] = current_time
