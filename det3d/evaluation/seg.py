"""
The Cell Tracking Challenge SEG measure.

For every reference (gt) object ``R``, the predicted object ``S`` matches it when
``|R ∩ S| > 0.5 · |R|`` (strictly greater, so at most one ``S`` can match, and an overlap of
exactly half does not). Its Jaccard index is ``J = |R ∩ S| / |R ∪ S|`` when matched, 0 otherwise.
SEG is the mean of ``J`` over all reference objects (over a dataset: over all reference objects of
all volumes, pooled). With no reference object SEG is undefined: :func:`seg_score` returns NaN
and warns.

CTC ground truth of 3D data is often a few annotated z-slices: pass ``slices=`` (or give the
record a ``"seg_slices"`` list) and every slice is scored as its own 2D image, each object of each
slice being one reference object, as the CTC evaluation does.
"""

import logging
import os
import warnings
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from .evaluator import DatasetEvaluator, gather_on_main_process
from .ground_truth import SLICES_KEY, annotated_slices, fit_shape, gt_label_volume, records_by_id
from .matching import _pred_labels
from .overlap import check_label_pair, label_overlap

__all__ = ["SEGJaccard", "seg_jaccard", "seg_score", "SEGEvaluator", "SLICES_KEY"]

logger = logging.getLogger(__name__)


class SEGJaccard(NamedTuple):
    """
    Per-reference-object result of SEG.

    Attributes:
        ids (ndarray): (K,) gt object ids.
        jaccard (ndarray): (K,) float64, J of each object (0 when unmatched).
        matched_ids (ndarray): (K,) id of the matching predicted object, 0 when none.
        slice_index (ndarray or None): (K,) z-slice of each object when scored per slice.
    """

    ids: np.ndarray
    jaccard: np.ndarray
    matched_ids: np.ndarray
    slice_index: Optional[np.ndarray] = None


def _seg_volume(gt: np.ndarray, pred: np.ndarray) -> SEGJaccard:
    ov = label_overlap(gt, pred)
    n = ov.gt_ids.size
    jac = np.zeros(n)
    matched = np.zeros(n, dtype=np.int64)
    gi, pj, inter, _ = ov.pairs()
    # Strict majority of R: exact in integers, so |R ∩ S| == |R| / 2 does not match.
    ok = 2 * inter > ov.gt_sizes[gi]
    gi, pj, inter = gi[ok], pj[ok], inter[ok]
    jac[gi] = inter / (ov.gt_sizes[gi] + ov.pred_sizes[pj] - inter)
    matched[gi] = ov.pred_ids[pj]
    return SEGJaccard(ov.gt_ids, jac, matched, None)


def seg_jaccard(gt_labels, pred_labels, slices: Optional[Sequence[int]] = None) -> SEGJaccard:
    """
    Jaccard index of every reference object under the CTC SEG rule.

    Args:
        gt_labels, pred_labels: integer label arrays of the same shape, 0 = background.
        slices: z-slices (indices along the first axis) that carry ground truth; each is scored
            as a separate 2D image. None: the whole array is one image.
    """
    gt, pred = check_label_pair(gt_labels, pred_labels)
    if slices is None:
        return _seg_volume(gt, pred)
    parts = []
    for z in slices:
        z = int(z)
        if not -gt.shape[0] <= z < gt.shape[0]:
            raise IndexError(f"seg slice {z} is outside the volume's {gt.shape[0]} z-slices")
        r = _seg_volume(gt[z], pred[z])
        parts.append(r._replace(slice_index=np.full(r.ids.size, z, dtype=np.int64)))
    if not parts:
        raise ValueError("seg_jaccard: slices is empty")
    return SEGJaccard(*(np.concatenate(f) for f in zip(*parts)))


def seg_score(gt_labels, pred_labels, slices: Optional[Sequence[int]] = None) -> float:
    """
    CTC SEG of one volume (0-1). NaN, with a RuntimeWarning, when there is no reference object.
    Arguments as in :func:`seg_jaccard`.
    """
    jac = seg_jaccard(gt_labels, pred_labels, slices).jaccard
    if jac.size == 0:
        warnings.warn(
            "seg_score: the ground truth has no objects; SEG is undefined (NaN)", RuntimeWarning
        )
        return float("nan")
    return float(jac.mean())


class SEGEvaluator(DatasetEvaluator):
    """
    CTC SEG over a dataset, pooled over all reference objects of all volumes. Predictions come
    from ``outputs[i]["instance_labels"]``; ground truth from the records (``instance_label_file``
    or painted ``annotations``); a CTC record annotated on some z-slices only
    (``record["seg_slices"]``) is scored on those slices, each as a 2D image.

    Results: ``{"seg": {"SEG": ...}}`` (0-1; NaN when the dataset has no reference object).
    Writes ``seg_results.json`` (with per-volume SEG and object counts) to ``output_dir``.
    """

    def __init__(
        self, dataset_name: str, output_dir: Optional[str] = None, distributed: bool = True
    ):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._records: Optional[dict] = None
        self._per_volume: List[dict] = []

    @classmethod
    def from_config(cls, cfg, dataset_name: str, output_dir: Optional[str] = None):
        return cls(dataset_name, output_dir)

    def reset(self) -> None:
        self._per_volume = []

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        if self._records is None:
            self._records = records_by_id(self._dataset_name)
        for inp, out in zip(inputs, outputs):
            if inp["image_id"] not in self._records:
                raise KeyError(
                    f"image_id {inp['image_id']!r} is not in dataset {self._dataset_name!r}"
                )
            record = self._records[inp["image_id"]]
            pred = _pred_labels(out, inp)
            gt = fit_shape(gt_label_volume(record), pred.shape, str(record.get("file_name")))
            jac = seg_jaccard(gt, pred, annotated_slices(record)).jaccard
            self._per_volume.append(
                {
                    "image_id": inp["image_id"],
                    "file_name": inp.get("file_name"),
                    "n_objects": int(jac.size),
                    "sum_jaccard": float(jac.sum()),
                    "SEG": float(jac.mean()) if jac.size else None,
                }
            )

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        per_volume = gather_on_main_process(self._per_volume, self._distributed)
        if per_volume is None:
            return None
        n = sum(v["n_objects"] for v in per_volume)
        if n == 0:
            logger.warning(
                "SEGEvaluator: no reference objects in %s; SEG is NaN", self._dataset_name
            )
        seg = sum(v["sum_jaccard"] for v in per_volume) / n if n else float("nan")
        if self._output_dir:
            from det3d.utils.file_io import write_json_atomic

            write_json_atomic(
                os.path.join(self._output_dir, "seg_results.json"),
                {
                    "dataset": self._dataset_name,
                    "SEG": seg if n else None,
                    "n_objects": n,
                    "per_volume": per_volume,
                },
                keep_earlier=True,  # an earlier run's results are kept aside, not overwritten
            )
        return {"seg": {"SEG": seg}}
