"""
Runs det3d's entry points once per case, each in its own process, cheaply: this interpreter
imports det3d and torch once, then forks a child per case that runs the real entry point
(``tools/*.py`` as ``__main__`` with the case's argv, or a snippet of user code), with stdout and
stderr in a file. The exit status is the child's own.

Usage: ``python fork_runner.py cases.json results.json``, where each case is
``{"name", "cwd", "argv": [script, args...] | "code": str, "env": {...}, "timeout": s}``;
``"watch": [folders]`` are checksummed before and after the case. Results are
``{"name": {"returncode", "output", "before", "after"}}`` (before/after: path -> sha256).
"""

import hashlib
import json
import os
import runpy
import signal
import sys
import time
import traceback

import torch  # noqa: F401  (imported once, before any fork)

import det3d  # noqa: F401
import det3d.data  # noqa: F401
import det3d.engine  # noqa: F401
import det3d.modeling  # noqa: F401


def _child(case: dict, out_path: str) -> None:
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    os.chdir(case["cwd"])
    os.environ.update(case.get("env", {}))
    code = 0
    try:
        if "code" in case:
            exec(compile(case["code"], "<user code>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = list(case["argv"])
            runpy.run_path(case["argv"][0], run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()  # what python prints for an uncaught error
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def checksums(folders) -> dict:
    """path -> sha256 of every file under ``folders``."""
    out = {}
    for folder in folders:
        for root, _, files in os.walk(folder):
            for fn in files:
                path = os.path.join(root, fn)
                with open(path, "rb") as f:
                    out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


def main(cases_file: str, results_file: str) -> None:
    with open(cases_file) as f:
        cases = json.load(f)
    results = {}
    for case in cases:
        out_dir = os.path.dirname(os.path.abspath(results_file))
        out_path = os.path.join(out_dir, case["name"] + ".out")
        before = checksums(case.get("watch", []))
        pid = os.fork()
        if pid == 0:
            _child(case, out_path)
        deadline = time.monotonic() + case.get("timeout", 120)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = None
                break
            time.sleep(0.02)
        with open(out_path, errors="replace") as f:
            output = f.read()
        rc = os.waitstatus_to_exitcode(status) if status is not None else "timeout"
        results[case["name"]] = {
            "returncode": rc,
            "output": output,
            "before": before,
            "after": checksums(case.get("watch", [])),
        }
    with open(results_file, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
