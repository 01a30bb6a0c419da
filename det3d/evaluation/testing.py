"""Printing evaluation results and checking them against ``TEST.EXPECTED_RESULTS``."""

import logging
import math
import sys
from collections.abc import Mapping
from typing import Dict

__all__ = ["print_csv_format", "verify_results", "flatten_results_dict"]

logger = logging.getLogger(__name__)


def print_csv_format(results: Dict[str, Dict[str, float]]) -> None:
    """
    Logs each task's metrics as two copy-pasteable CSV lines (names, values), e.g.::

        copypaste: Task: segm
        copypaste: AP,AP50,AP75,APs,APm,APl
        copypaste: 52.1234,80.0000,...

    Per-class entries (``AP-<class>``) are left out, as in Detectron2.
    """
    if not isinstance(results, Mapping):
        raise TypeError(
            f"print_csv_format expects a dict of task -> metrics, got {type(results).__name__}"
        )
    for task, res in results.items():
        if isinstance(res, Mapping):
            items = [(k, v) for k, v in res.items() if "-" not in k]
            logger.info("copypaste: Task: %s", task)
            logger.info("copypaste: %s", ",".join(k for k, _ in items))
            logger.info("copypaste: %s", ",".join(f"{v:.4f}" for _, v in items))
        else:
            logger.info("copypaste: %s=%s", task, res)


def verify_results(cfg, results: Dict[str, Dict[str, float]]) -> bool:
    """
    Checks results against ``cfg.TEST.EXPECTED_RESULTS``: a list of ``[task, metric, expected,
    tolerance]``. Logs every mismatch; exits the process with status 1 on failure (as Detectron2
    does, so CI notices).

    Returns:
        True when every expectation holds (or there is none).
    """
    expected_results = cfg.TEST.EXPECTED_RESULTS
    if not len(expected_results):
        return True
    ok = True
    for task, metric, expected, tolerance in expected_results:
        actual = results.get(task, {}).get(metric)
        if actual is None or not math.isfinite(actual) or abs(actual - expected) > tolerance:
            ok = False
            logger.error(
                "Result verification failed: %s/%s = %s, expected %s +- %s",
                task,
                metric,
                actual,
                expected,
                tolerance,
            )
    if not ok:
        logger.error("Results were:\n%s", results)
        sys.exit(1)
    logger.info("Results verification passed.")
    return ok


def flatten_results_dict(results: Mapping) -> Dict[str, float]:
    """``{"segm": {"AP": 1}}`` -> ``{"segm/AP": 1}`` (nested dicts of any depth)."""
    out = {}
    for k, v in results.items():
        if isinstance(v, Mapping):
            for kk, vv in flatten_results_dict(v).items():
                out[f"{k}/{kk}"] = vv
        else:
            out[k] = v
    return out
