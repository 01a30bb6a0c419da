"""
det3d's part of ``bench/peers.py``: plan a config for the training split within the budget
(``tools/plan.py``), train and evaluate it (``tools/train_net.py``), and read back what the run
measured, from the run's own files:

* scores: ``OUTPUT_DIR/inference/<test>/matching_results.json`` and ``seg_results.json``;
* training time: the trainer's ``Total training time`` line in ``OUTPUT_DIR/log.txt`` (the
  iterations, data loading and checkpoints; not the final evaluation);
* inference time per volume: the ``Total inference pure compute time ... (s / volume)`` line of
  the last evaluation in ``log.txt`` (the model's forward with its post-processing into the label
  volume, warm-up volumes excluded; the evaluators' own time is not in it).

:func:`det3d_summary` reads any finished run, so ``--det3d-output DIR`` scores a run trained
earlier without training again.
"""

import os
import re
import subprocess
import sys
import time
from typing import Dict, Optional

import yaml
from score import read_scores

from det3d.data.datasets import dataset_folder_name

MARKER = "peers_det3d.json"


def _run_logged(cmd, log_path: str, env: dict) -> float:
    """Runs ``cmd`` with its output appended to ``log_path``; returns the wall seconds."""
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        with open(log_path) as f:
            tail = "".join(f.readlines()[-30:])
        raise RuntimeError(f"{cmd[1]} failed (exit {rc}); its output is in {log_path}:\n{tail}")
    return time.perf_counter() - t0


def train_det3d(
    repo: str, train: str, test: str, minutes: float, config: str, output_dir: str, env: dict
) -> Dict[str, float]:
    """
    Plans ``config`` for ``train`` with a ``minutes`` budget, then trains and evaluates it into
    ``output_dir``. Returns the wall seconds of planning and of the training run.
    """
    plan = os.path.join(repo, "tools", "plan.py")
    if not os.path.isfile(plan):
        raise FileNotFoundError(f"{plan}: det3d's planner (issue 14, point 2) is not in this tree")
    log = os.path.splitext(config)[0] + ".bench.log"
    plan_cmd = [sys.executable, plan, "--train", train, "--test", test, "--output", config]
    plan_cmd += ["--budget-minutes", f"{minutes:g}", "--output-dir", output_dir, "--overwrite"]
    plan_s = _run_logged(plan_cmd, log, env)
    train_s = _run_logged(
        [sys.executable, os.path.join(repo, "tools", "train_net.py"), "--config-file", config],
        log,
        env,
    )
    return {"plan_seconds": plan_s, "train_wall_seconds": train_s}


def _last(pattern: str, text: str) -> Optional[re.Match]:
    found = list(re.finditer(pattern, text))
    return found[-1] if found else None


def inference_seconds_per_volume(log: str) -> Optional[float]:
    """The seconds per volume of the last evaluation in a run's ``log.txt`` text (its ``Total
    inference pure compute time ... (s / volume)`` line), or None where it has none."""
    found = _last(r"Total inference pure compute time: \S+ \(([\d.]+) s / volume\)", log)
    return float(found.group(1)) if found else None


def _hms(s: str) -> float:
    h, m, sec = (int(x) for x in s.split(":"))
    return 3600.0 * h + 60.0 * m + sec


def det3d_summary(output_dir: str) -> dict:
    """
    What a finished det3d run measured (module docstring): ``{"test", "scores", "eval_folder"
    (its evaluators' files), "train_minutes", "infer_seconds_per_volume", "max_iter" (the
    config's), "iterations" (trained)}``.

    Raises:
        FileNotFoundError / ValueError: naming the file or line that is missing.
    """
    cfg_path = os.path.join(output_dir, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{output_dir}: no config.yaml; not a det3d run directory")
    with open(cfg_path) as f:
        cfg = yaml.safe_load(f)
    tests = list(cfg.get("DATASETS", {}).get("TEST", []))
    if len(tests) != 1:
        raise ValueError(f"{cfg_path}: DATASETS.TEST is {tests}; the bench needs one test split")
    folder = os.path.join(output_dir, "inference", dataset_folder_name(tests[0]))
    if not os.path.isfile(os.path.join(folder, "matching_results.json")):
        raise FileNotFoundError(
            f"{folder}: no matching_results.json; has the run of {output_dir} finished and been "
            "evaluated with TEST.EVALUATORS including 'matching' and 'seg'?"
        )
    log_path = os.path.join(output_dir, "log.txt")
    with open(log_path) as f:
        log = f.read()
    train = _last(r"Total training time: (\d+:\d\d:\d\d)", log)
    infer = inference_seconds_per_volume(log)
    budget = _last(r"Time budget: (\d+) iterations in", log)
    if train is None or infer is None:
        missing = "'Total training time'" if train is None else "'inference pure compute time'"
        raise ValueError(f"{log_path}: no {missing} line; did training and evaluation finish?")
    max_iter = cfg.get("SOLVER", {}).get("MAX_ITER")
    return {
        "test": tests[0],
        "scores": read_scores(folder),
        "eval_folder": folder,
        "train_minutes": _hms(train.group(1)) / 60.0,
        "infer_seconds_per_volume": infer,
        "max_iter": max_iter,
        # a run with SOLVER.TIME_BUDGET_MINUTES re-fits MAX_ITER; its log says what it trained
        "iterations": int(budget.group(1)) if budget else max_iter,
    }
