"""
Instance matching metrics on label volumes (the StarDist / Caicedo et al. definitions).

Definition, for one threshold ``t`` in (0, 1]:

* A gt object and a predicted object may be matched when ``IoU >= t`` (greater or equal, as in
  StarDist's ``matching``); every object is matched at most once.
* Among all one-to-one matchings, the one with the **most** matches is taken, and among those the
  one with the **largest total IoU** (Hungarian assignment,
  ``scipy.optimize.linear_sum_assignment``, with cost ``-(1 + IoU / (2n))`` on admissible pairs).
  The number of matches equals StarDist's; StarDist breaks ties by the IoU of *all* assigned
  pairs, including those below ``t``, so its matched-IoU sum can differ from this one in rare
  tied cases when ``t <= 0.5``. For ``t > 0.5`` the matching is unique.
* TP = matches, FP = ``n_pred - TP``, FN = ``n_true - TP``;
  precision = TP / (TP + FP), recall = TP / (TP + FN), f1 = 2TP / (2TP + FP + FN),
  accuracy = TP / (TP + FP + FN), mean_matched_iou = sum of matched IoU / TP,
  panoptic_quality = sum of matched IoU / (TP + FP/2 + FN/2). A ratio whose denominator is 0 is 0.

The assignment is solved per connected component of the graph of admissible pairs, so thousands
of objects cost little more than a sort.
"""

import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from .evaluator import DatasetEvaluator, gather_on_main_process
from .ground_truth import annotated_slices, fit_shape, gt_label_volume, records_by_id
from .cocoeval3d import default_area_ranges
from .overlap import LabelOverlap, label_overlap, touching_objects

__all__ = [
    "DEFAULT_THRESHOLDS",
    "matching_metrics",
    "matching_counts",
    "metrics_from_counts",
    "InstanceMatchingEvaluator",
]

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_COUNT_KEYS = ("n_true", "n_pred", "tp", "fp", "fn", "sum_matched_iou")
_METRIC_KEYS = ("precision", "recall", "f1", "accuracy", "mean_matched_iou", "panoptic_quality")


def _check_thresholds(thresholds: Sequence[float]) -> List[float]:
    thresholds = [float(t) for t in thresholds]
    if not thresholds or any(not (0.0 < t <= 1.0) for t in thresholds):
        raise ValueError(f"IoU thresholds must lie in (0, 1], got {thresholds}")
    return thresholds


def _best_matching(gi: np.ndarray, pj: np.ndarray, iou: np.ndarray, n_g: int, n_p: int):
    """
    Maximum-cardinality, then maximum-IoU, one-to-one matching over the admissible pairs
    ``(gi[k], pj[k])``. Returns the matched IoUs.
    """
    if gi.size == 0:
        return iou[:0]
    deg_g = np.bincount(gi, minlength=n_g)
    deg_p = np.bincount(pj, minlength=n_p)
    lone = (deg_g[gi] == 1) & (deg_p[pj] == 1)  # a component of one pair: matched as is
    matched = [iou[lone]]
    gi, pj, iou = gi[~lone], pj[~lone], iou[~lone]
    if gi.size:
        graph = sparse.coo_matrix(
            (np.ones(gi.size, np.int8), (gi, pj + n_g)), shape=(n_g + n_p, n_g + n_p)
        )
        _, comp = connected_components(graph, directed=False)
        ecomp = comp[gi]
        order = np.argsort(ecomp, kind="stable")
        gi, pj, iou, ecomp = gi[order], pj[order], iou[order], ecomp[order]
        bounds = np.flatnonzero(np.diff(ecomp)) + 1
        for g, p, s in zip(np.split(gi, bounds), np.split(pj, bounds), np.split(iou, bounds)):
            rows, r = np.unique(g, return_inverse=True)
            cols, c = np.unique(p, return_inverse=True)
            n = min(rows.size, cols.size)
            cost = np.zeros((rows.size, cols.size))
            # One more match always outweighs any IoU gain: the IoU term sums to < 1/2.
            cost[r, c] = -(1.0 + s / (2.0 * n))
            ri, ci = linear_sum_assignment(cost)
            ok = cost[ri, ci] < 0
            score = np.zeros((rows.size, cols.size))
            score[r, c] = s
            matched.append(score[ri[ok], ci[ok]])
    return np.concatenate(matched)


def matching_counts(
    ov: LabelOverlap, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> Dict[float, dict]:
    """
    TP/FP/FN and the matched-IoU sum per threshold, from a :func:`label_overlap` result.
    These add up across volumes; turn them into metrics with :func:`metrics_from_counts`.
    """
    thresholds = _check_thresholds(thresholds)
    n_g, n_p = ov.gt_ids.size, ov.pred_ids.size
    gi, pj, _, iou = ov.pairs()
    out = {}
    for t in thresholds:
        keep = iou >= t
        m = _best_matching(gi[keep], pj[keep], iou[keep], n_g, n_p)
        tp = int(m.size)
        out[t] = {
            "n_true": int(n_g),
            "n_pred": int(n_p),
            "tp": tp,
            "fp": int(n_p - tp),
            "fn": int(n_g - tp),
            "sum_matched_iou": float(m.sum()),
        }
    return out


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den > 0 else 0.0


def metrics_from_counts(counts: dict) -> dict:
    """Adds precision, recall, f1, accuracy, mean_matched_iou and panoptic_quality to counts."""
    tp, fp, fn, s = counts["tp"], counts["fp"], counts["fn"], counts["sum_matched_iou"]
    out = dict(counts)
    out.update(
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        accuracy=_ratio(tp, tp + fp + fn),
        mean_matched_iou=_ratio(s, tp),
        panoptic_quality=_ratio(s, tp + fp / 2 + fn / 2),
    )
    return out


def matching_metrics(
    gt_labels: np.ndarray, pred_labels: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> Dict[float, dict]:
    """
    Matches the objects of two label volumes at each IoU threshold (definition in the module
    docstring).

    Args:
        gt_labels, pred_labels: integer label arrays of the same shape, 0 = background.
        thresholds: IoU thresholds in (0, 1].

    Returns:
        dict threshold -> ``{"precision", "recall", "f1", "accuracy", "mean_matched_iou",
        "panoptic_quality", "n_true", "n_pred", "tp", "fp", "fn", "sum_matched_iou"}``.
    """
    thresholds = _check_thresholds(thresholds)
    counts = matching_counts(label_overlap(gt_labels, pred_labels), thresholds)
    return {t: metrics_from_counts(c) for t, c in counts.items()}


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class InstanceMatchingEvaluator(DatasetEvaluator):
    """
    Instance matching over a dataset: TP, FP, FN and matched IoU are summed over volumes, then
    turned into metrics. Predictions come from ``outputs[i]["instance_labels"]``; ground truth
    from the dataset's records (``instance_label_file`` or painted ``annotations``). A CTC record
    annotated on some z-slices only is matched slice by slice, each slice a 2D image.

    Results: ``{"matching": {"precision@0.5": ..., "recall@0.5", "f1@0.5", "accuracy@0.5",
    "mean_matched_iou@0.5", "panoptic_quality@0.5", ...}}`` for every threshold (0-1 scale),
    plus where objects are lost (volumes with full ground truth): ``recall@0.5_<group>`` and
    ``mean_best_iou_<group>`` (each gt object's best IoU with a predicted one, 0 if none) for the
    groups ``touching`` (objects sharing a face with another object) / ``isolated`` and
    ``small`` / ``medium`` / ``large`` (gt volume below 16³, below 32³, above; 32², 96² in 2D, as
    COCO3DEvaluator's area ranges). Writes ``matching_results.json`` (with per-volume counts and
    the group sizes) to ``output_dir``.
    """

    def __init__(
        self,
        dataset_name: str,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        output_dir: Optional[str] = None,
        distributed: bool = True,
    ):
        self._dataset_name = dataset_name
        self._thresholds = _check_thresholds(thresholds)
        self._output_dir = output_dir
        self._distributed = distributed
        self._records: Optional[dict] = None
        self._per_volume: List[dict] = []

    @classmethod
    def from_config(cls, cfg, dataset_name: str, output_dir: Optional[str] = None):
        return cls(dataset_name, cfg.TEST.MATCHING_IOU_THRESHOLDS, output_dir)

    def reset(self) -> None:
        self._per_volume = []

    def _record(self, image_id) -> dict:
        if self._records is None:
            self._records = records_by_id(self._dataset_name)
        try:
            return self._records[image_id]
        except KeyError:
            raise KeyError(
                f"image_id {image_id!r} is not in dataset {self._dataset_name!r}"
            ) from None

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            record = self._record(inp["image_id"])
            pred = _pred_labels(out, inp)
            gt = fit_shape(gt_label_volume(record), pred.shape, str(record.get("file_name")))
            slices = annotated_slices(record)
            if slices is None:
                ov = label_overlap(gt, pred)
                counts = matching_counts(ov, self._thresholds)
                objects = _object_table(ov, gt)
            else:  # partial CTC ground truth: each annotated slice is a 2D image of its own
                counts = _add_counts(
                    [
                        matching_counts(label_overlap(gt[z], pred[z]), self._thresholds)
                        for z in slices
                    ]
                )
                objects = np.zeros((0, 4))
            self._per_volume.append(
                {
                    "image_id": inp["image_id"],
                    "file_name": inp.get("file_name"),
                    "counts": counts,
                    "objects": objects,
                }
            )

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        per_volume = gather_on_main_process(self._per_volume, self._distributed)
        if per_volume is None:
            return None
        if not per_volume:
            logger.warning("InstanceMatchingEvaluator: no volumes were processed")
        total = _add_counts([v["counts"] for v in per_volume], self._thresholds)
        metrics = {t: metrics_from_counts(c) for t, c in total.items()}
        result = {}
        for t in self._thresholds:
            for k in _METRIC_KEYS:
                result[f"{k}@{t:g}"] = metrics[t][k]
        groups = _group_metrics(
            np.concatenate([np.zeros((0, 4))] + [v["objects"] for v in per_volume])
        )
        for name, g in groups.items():
            result[f"recall@0.5_{name}"] = g["recall@0.5"]
            result[f"mean_best_iou_{name}"] = g["mean_best_iou"]
        if self._output_dir:
            from det3d.utils.file_io import write_json_atomic

            write_json_atomic(
                os.path.join(self._output_dir, "matching_results.json"),
                {
                    "dataset": self._dataset_name,
                    "thresholds": self._thresholds,
                    "metrics": {f"{t:g}": m for t, m in metrics.items()},
                    "groups": groups,
                    "per_volume": [
                        {
                            "image_id": v["image_id"],
                            "file_name": v["file_name"],
                            "counts": {f"{t:g}": c for t, c in v["counts"].items()},
                        }
                        for v in per_volume
                    ],
                },
                keep_earlier=True,  # an earlier run's results are kept aside, not overwritten
            )
        return {"matching": result}


def _object_table(ov: LabelOverlap, gt: np.ndarray) -> np.ndarray:
    """
    (G, 4) float64 per gt object: voxels, touches another object (0/1), best IoU, and the size
    class by COCO3DEvaluator's area ranges (0 small, 1 medium, 2 large).
    """
    gi, _, _, iou = ov.pairs()
    best = np.zeros(ov.gt_ids.size)
    np.maximum.at(best, gi, iou)
    touching = np.isin(ov.gt_ids, touching_objects(gt)).astype(np.float64)
    bounds = default_area_ranges(gt.ndim)[1:3]
    size_class = np.searchsorted(bounds, ov.gt_sizes, side="right").astype(np.float64)
    sizes = ov.gt_sizes.astype(np.float64)
    return np.stack([sizes, touching, best, size_class], axis=1).reshape(-1, 4)


def _group_metrics(table: np.ndarray) -> Dict[str, dict]:
    """Recall at IoU 0.5 and mean best IoU of the gt objects in each group (see the class)."""
    touching, best, size_class = table[:, 1] > 0, table[:, 2], table[:, 3]
    groups = {
        "touching": touching,
        "isolated": ~touching,
        "small": size_class == 0,
        "medium": size_class == 1,
        "large": size_class == 2,
    }
    out = {}
    for name, sel in groups.items():
        n = int(sel.sum())
        out[name] = {
            "n": n,
            "recall@0.5": float((best[sel] >= 0.5).mean()) if n else float("nan"),
            "mean_best_iou": float(best[sel].mean()) if n else float("nan"),
        }
    return out


def _add_counts(parts: List[Dict[float, dict]], thresholds: Optional[Sequence[float]] = None):
    """Sums per-threshold counts (from :func:`matching_counts`)."""
    thresholds = thresholds if thresholds is not None else (list(parts[0]) if parts else [])
    total = {t: {k: 0 for k in _COUNT_KEYS} for t in thresholds}
    for part in parts:
        for t in thresholds:
            for k in _COUNT_KEYS:
                total[t][k] += part[t][k]
    return total


def _pred_labels(output: dict, inp: dict) -> np.ndarray:
    """The predicted label volume of one output (``instance_labels``, else pasted instances)."""
    if "instance_labels" in output:
        return _to_numpy(output["instance_labels"])
    if "instances" in output:
        from det3d.modeling.postprocessing import instances_to_label_volume

        inst = output["instances"].to("cpu")
        return _to_numpy(instances_to_label_volume(inst, tuple(inst.image_size), 0.5))
    raise KeyError(
        f"Output for image_id {inp.get('image_id')!r} has neither 'instance_labels' nor 'instances'"
    )
