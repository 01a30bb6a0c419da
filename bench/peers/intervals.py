"""
How sure the peers table is: 95% intervals from resampling the test volumes (``bench/peers.py``).

A held-out split of ten volumes holds about 80 objects, so a SEG of 0.835 could as well have been
0.80 or 0.87 on another ten volumes drawn the same way. The bootstrap here draws the test volumes
with replacement (each draw as many volumes as the split has), recomputes every method's SEG and
F1@0.5 from the drawn volumes' sums (as the evaluators pool them: SEG = sum of Jaccard indices
over the number of reference objects, F1 from the pooled matches), and reports the 2.5th and
97.5th percentiles. Differences between two methods are paired: both are scored on the same drawn
volumes, so what a volume makes hard for both cancels out.

The per-volume sums come from the evaluators' own files (``seg_results.json``,
``matching_results.json``), which det3d and both peers write alike (``score.py``).
"""

import os
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from det3d.utils.file_io import read_json

__all__ = ["read_per_volume", "volume_bootstrap", "format_intervals", "STATISTICS"]

STATISTICS = ("SEG", "f1@0.5")


def read_per_volume(folder: str, iou: str = "0.5") -> Dict[int, Dict[str, float]]:
    """
    Each test volume's sums from an evaluation folder: ``{image_id: {"sum_jaccard", "n_objects",
    "tp", "fp", "fn"}}``, the matches at IoU ``iou``.

    Raises:
        KeyError / ValueError: naming the file and what it lacks.
    """
    seg_path = os.path.join(folder, "seg_results.json")
    match_path = os.path.join(folder, "matching_results.json")
    seg = read_json(seg_path, "SEG results")
    matching = read_json(match_path, "matching results")
    for path, data in ((seg_path, seg), (match_path, matching)):
        if "per_volume" not in data:
            raise KeyError(f"{path} has no per_volume list (written by an older det3d?)")
    out = {}
    for v in seg["per_volume"]:
        out[int(v["image_id"])] = {
            "sum_jaccard": float(v["sum_jaccard"]),
            "n_objects": float(v["n_objects"]),
        }
    for v in matching["per_volume"]:
        image_id = int(v["image_id"])
        if image_id not in out:
            raise ValueError(f"{match_path}: volume {image_id} is not in {seg_path}")
        counts = v["counts"].get(iou)
        if counts is None:
            raise KeyError(f"{match_path}: volume {image_id} has no counts at IoU {iou}")
        out[image_id].update({k: float(counts[k]) for k in ("tp", "fp", "fn")})
    missing = sorted(i for i, v in out.items() if "tp" not in v)
    if missing:
        raise ValueError(f"{match_path}: no matching counts for volumes {missing} of {seg_path}")
    return out


def _pooled(weights: np.ndarray, sums: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """SEG and F1 of each row of ``weights`` (how often each volume was drawn)."""
    s = {k: weights @ v for k, v in sums.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        seg = s["sum_jaccard"] / s["n_objects"]
        f1 = 2 * s["tp"] / (2 * s["tp"] + s["fp"] + s["fn"])
    return {"SEG": seg, "f1@0.5": f1}


def volume_bootstrap(
    per_volume: Mapping[str, Mapping[int, Mapping[str, float]]],
    reference: str = "",
    samples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Dict[str, dict]:
    """
    95% (``level``) bootstrap intervals over the test volumes.

    Args:
        per_volume: method name -> :func:`read_per_volume` of its evaluation; every method must
            cover the same volumes.
        reference: a method of ``per_volume`` whose differences to each other method are also
            reported ("" for none).
        samples: number of resamples.
        seed: of the resampling (the same draws serve every method).

    Returns:
        ``{"volumes": V, "samples": n, "level": level, "methods": {name: {stat: [value, lo, hi]}},
        "differences": {other: {stat: [reference - other, lo, hi]}}}`` for stat in
        :data:`STATISTICS`; a statistic a draw leaves undefined (no objects) is left out of its
        percentiles.

    Raises:
        ValueError: methods that cover different volumes, an unknown reference, no volumes, or
            bad ``samples`` / ``level``.
    """
    if not per_volume:
        raise ValueError("volume_bootstrap: no methods")
    if samples < 1 or not 0.0 < level < 1.0:
        raise ValueError(
            f"volume_bootstrap: samples {samples} must be >= 1, level {level} in (0, 1)"
        )
    if reference and reference not in per_volume:
        raise ValueError(
            f"volume_bootstrap: reference {reference!r} is not one of {list(per_volume)}"
        )
    names = list(per_volume)
    ids = sorted(per_volume[names[0]])
    for name in names[1:]:
        if sorted(per_volume[name]) != ids:
            raise ValueError(
                f"volume_bootstrap: {name} was scored on volumes {sorted(per_volume[name])}, "
                f"{names[0]} on {ids}: the intervals need the same test volumes"
            )
    if not ids:
        raise ValueError("volume_bootstrap: no test volumes")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(samples, len(ids)))
    # how often each volume is drawn in each resample
    weights = np.zeros((samples, len(ids)))
    np.add.at(weights, (np.arange(samples)[:, None], draws), 1.0)
    full = np.ones((1, len(ids)))
    tail = 100.0 * (1.0 - level) / 2.0

    def interval(values: np.ndarray) -> Tuple[float, float]:
        values = values[np.isfinite(values)]
        if not len(values):
            return float("nan"), float("nan")
        lo, hi = np.percentile(values, [tail, 100.0 - tail])
        return float(lo), float(hi)

    stats = {}
    for name in names:
        sums = {
            k: np.array([per_volume[name][i][k] for i in ids], dtype=np.float64)
            for k in ("sum_jaccard", "n_objects", "tp", "fp", "fn")
        }
        stats[name] = (_pooled(full, sums), _pooled(weights, sums))
    out = {"volumes": len(ids), "samples": samples, "level": level, "methods": {}}
    for name in names:
        point, boot = stats[name]
        out["methods"][name] = {k: [float(point[k][0]), *interval(boot[k])] for k in STATISTICS}
    if reference:
        out["differences"] = {}
        for name in names:
            if name == reference:
                continue
            out["differences"][name] = {
                k: [
                    float(stats[reference][0][k][0] - stats[name][0][k][0]),
                    *interval(stats[reference][1][k] - stats[name][1][k]),
                ]
                for k in STATISTICS
            }
    return out


def format_intervals(
    result: dict,
    labels: Mapping[str, str],
    reference: str = "",
    names: Optional[Mapping[str, str]] = None,
) -> Sequence[str]:
    """
    The table's lines under it: each method's intervals, then the paired differences; each
    statistic under its name in ``names`` (the table's, ``score.SCORE_NAMES``), else its key.
    """
    names = names or {}
    pct = f"{100 * result['level']:g}%"
    head = (
        f"  {pct} intervals, the {result['volumes']} test volumes drawn with replacement "
        f"{result['samples']} times:"
    )
    lines = [head]
    for name, s in result["methods"].items():
        cells = ", ".join(f"{names.get(k, k)} {v[1]:.3f}-{v[2]:.3f}" for k, v in s.items())
        lines.append(f"    {labels.get(name, name)}: {cells}")
    for name, s in result.get("differences", {}).items():
        cells = ", ".join(
            f"{names.get(k, k)} {v[0]:+.3f} ({v[1]:+.3f} to {v[2]:+.3f})" for k, v in s.items()
        )
        lines.append(
            f"    {labels.get(reference, reference)} minus {labels.get(name, name)}: {cells}"
        )
    return lines
