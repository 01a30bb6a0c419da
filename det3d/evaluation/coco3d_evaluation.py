"""COCO-style box and mask AP of a det3d model over a registered dataset, in 2D or 3D."""

import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from det3d.structures.rle import box_mask_to_rle, label_volume_to_rles
from det3d.utils.file_io import atomic_write

from .cocoeval3d import STAT_NAMES, COCOeval3D, default_area_ranges
from .evaluator import DatasetEvaluator, gather_on_main_process
from .ground_truth import annotated_slices, gt_coco_annotations, records_by_id

__all__ = ["COCO3DEvaluator", "instances_to_coco3d_json"]

logger = logging.getLogger(__name__)

_AP_KEYS = STAT_NAMES[:6]


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def instances_to_coco3d_json(
    instances, image_id, instance_labels=None, with_masks: bool = True, mask_threshold: float = 0.5
) -> List[dict]:
    """
    Converts one volume's predicted ``Instances`` to COCO-style result dicts.

    Args:
        instances: ``Instances`` with ``pred_boxes`` (``(N, 2*ndim)`` corners, XYZXYZ / XYXY),
            ``scores``, ``pred_classes`` and optionally ``pred_masks``.
        instance_labels: the output's label volume (row ``i`` has label ``i + 1``), used when the
            instances carry no ``pred_masks``: instance ``i``'s mask is then the voxels labelled
            ``i + 1``. With ``pred_masks``, each instance's own mask is pasted (masks may
            overlap, as in COCO), so detections left out of the label volume (below its score
            threshold) still count with their mask.
        with_masks: encode masks (pasting ``pred_masks``, else from ``instance_labels``).

    Returns:
        list of ``{"image_id", "category_id", "bbox" ([x, y, (z,) w, h, (d)]), "score"}`` plus
        ``"segmentation"`` (N-D RLE) and ``"area"`` (mask voxels) with masks.
    """
    n = len(instances)
    if n == 0:
        return []
    boxes = _numpy(instances.pred_boxes.tensor).astype(np.float64)
    ndim = boxes.shape[1] // 2
    corner_size = np.concatenate([boxes[:, :ndim], boxes[:, ndim:] - boxes[:, :ndim]], axis=1)
    scores = _numpy(instances.scores).astype(np.float64)
    classes = _numpy(instances.pred_classes).astype(np.int64)
    rles: List[Optional[dict]] = [None] * n
    areas = [None] * n
    if with_masks:
        if instances.has("pred_masks"):
            from det3d.modeling.postprocessing import mask_boxes, paste_mask

            shape = tuple(int(s) for s in instances.image_size)
            in_boxes = mask_boxes(instances)
            for i in range(n):
                slices, local = paste_mask(
                    instances.pred_masks[i], in_boxes[i], shape, mask_threshold
                )
                local = _numpy(local).astype(bool)
                rles[i] = box_mask_to_rle(local, [s.start or 0 for s in slices], shape)
                areas[i] = float(local.sum())
        elif instance_labels is not None:
            labels = _numpy(instance_labels)
            by_id = label_volume_to_rles(labels, range(1, n + 1))
            counts = np.bincount(labels.reshape(-1), minlength=n + 1)[1 : n + 1]
            rles = [by_id[i + 1] for i in range(n)]
            areas = [float(c) for c in counts]
        else:
            raise KeyError(
                f"image_id {image_id!r}: segm evaluation needs 'instance_labels' in the output or "
                f"'pred_masks' in its instances"
            )
    out = []
    for i in range(n):
        res = {
            "image_id": image_id,
            "category_id": int(classes[i]),
            "bbox": corner_size[i].tolist(),
            "score": float(scores[i]),
        }
        if rles[i] is not None:
            res["segmentation"] = rles[i]
            res["area"] = areas[i]
        out.append(res)
    return out


def _save_atomic(obj, path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f), keep_earlier=True)


def _nan_to_none(x):
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


class COCO3DEvaluator(DatasetEvaluator):
    """
    Box and mask AP (COCO's definition and 0-100 scale) over a registered dataset, in 2D or 3D.

    Ground truth comes from the dataset's records: ``annotations`` (boxes, RLE masks, crowd
    flags) or ``instance_label_file`` (one object per id, categories from ``instance_classes``);
    label volumes are converted to per-object RLEs once per image and cached. Predictions are
    ``outputs[i]["instances"]``; masks are read from ``outputs[i]["instance_labels"]`` when
    present (exact for det3d's non-overlapping output), else pasted from ``pred_masks``.

    Results: ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<class>"...},
    "segm": {...}}``. "Area" ranges are voxel counts: by default small < 16^3 <= medium < 32^3 <=
    large in 3D, COCO's 32^2 / 96^2 in 2D. ``max_dets`` (``TEST.MAX_DETS``) is the largest
    maxDets, used for AP: it does not cap dense volumes at COCO's 100.

    Files (main process, atomic): ``instances_predictions.pth`` (per-image predictions),
    ``coco3d_instances_results.json`` (all detections, COCO result format) and
    ``coco3d_results.json`` (metrics, the 12 COCO stats per task, parameters).
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] = ("bbox", "segm"),
        output_dir: Optional[str] = None,
        max_dets: int = 500,
        distributed: bool = True,
        area_ranges: Optional[Sequence[float]] = None,
        mask_threshold: float = 0.5,
    ):
        self._dataset_name = dataset_name
        self._mask_threshold = float(mask_threshold)
        self._tasks = tuple(tasks)
        for t in self._tasks:
            if t not in ("bbox", "segm"):
                raise ValueError(f"COCO3DEvaluator: unknown task {t!r}; use 'bbox' and/or 'segm'")
        self._output_dir = output_dir
        if int(max_dets) < 1:
            raise ValueError(f"max_dets must be >= 1, got {max_dets}")
        self._max_dets = [1, min(10, int(max_dets)), int(max_dets)]
        self._distributed = distributed
        self._area_ranges = tuple(area_ranges) if area_ranges is not None else None
        self._records: Optional[dict] = None
        self._gt_cache: Dict[object, Tuple[List[dict], tuple]] = {}
        self._predictions: List[dict] = []

    @classmethod
    def from_config(cls, cfg, dataset_name: str, output_dir: Optional[str] = None):
        """Tasks from ``MODEL.MASK_ON`` (no ``"segm"`` for a box-only model), ``TEST.MAX_DETS``,
        and the model's own ``MODEL.ROI_MASK_HEAD.MASK_THRESHOLD`` for pasting masks."""
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        return cls(
            dataset_name,
            tasks,
            output_dir=output_dir,
            max_dets=cfg.TEST.MAX_DETS,
            mask_threshold=cfg.MODEL.ROI_MASK_HEAD.MASK_THRESHOLD,
        )

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            pred = {"image_id": inp["image_id"]}
            if "instances" in out:
                inst = out["instances"].to("cpu")
                pred["image_size"] = tuple(int(s) for s in inst.image_size)
                pred["instances"] = instances_to_coco3d_json(
                    inst,
                    inp["image_id"],
                    out.get("instance_labels"),
                    with_masks="segm" in self._tasks,
                    mask_threshold=self._mask_threshold,
                )
            self._predictions.append(pred)

    def _ground_truth(self, image_id, shape: Optional[tuple]) -> Tuple[List[dict], tuple]:
        if image_id not in self._gt_cache:
            if self._records is None:
                self._records = records_by_id(self._dataset_name)
            if image_id not in self._records:
                raise KeyError(f"image_id {image_id!r} is not in dataset {self._dataset_name!r}")
            self._gt_cache[image_id] = gt_coco_annotations(self._records[image_id], shape)
        return self._gt_cache[image_id]

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        predictions = gather_on_main_process(self._predictions, self._distributed)
        if predictions is None:
            return None
        if not predictions:
            logger.warning("COCO3DEvaluator: no predictions were processed")
            return {}
        if self._output_dir:
            _save_atomic(predictions, os.path.join(self._output_dir, "instances_predictions.pth"))

        from det3d.data import MetadataCatalog

        meta = MetadataCatalog.get(self._dataset_name)
        thing_classes = list(meta.get("thing_classes", None) or [])

        if self._records is None:
            self._records = records_by_id(self._dataset_name)
        partial = [
            p["image_id"]
            for p in predictions
            if annotated_slices(self._records.get(p["image_id"], {}))
        ]
        if partial:
            # AP needs every object of a volume annotated; slice-annotated volumes cannot give it.
            logger.warning(
                "COCO3DEvaluator: %d volume(s) of %s are annotated on some z-slices only and are "
                "left out of AP (matching and SEG use them): image_ids %s",
                len(partial),
                self._dataset_name,
                partial[:10],
            )
            predictions = [p for p in predictions if p["image_id"] not in set(partial)]
        img_ids = [p["image_id"] for p in predictions]
        gts, dts = [], []
        ndim = None
        for p in predictions:
            anns, shape = self._ground_truth(p["image_id"], p.get("image_size"))
            gts += [dict(a, image_id=p["image_id"]) for a in anns]
            dts += p.get("instances", [])
            ndim = ndim or len(p.get("image_size") or shape)
        if dts:
            ndim = len(dts[0]["bbox"]) // 2
        elif gts:
            ndim = len(gts[0]["bbox"]) // 2
        if thing_classes:
            cat_ids = list(range(len(thing_classes)))
            for a in gts + dts:
                if not 0 <= a["category_id"] < len(cat_ids):
                    raise ValueError(
                        f"category_id {a['category_id']} (image {a['image_id']!r}) is outside the "
                        f"{len(cat_ids)} thing_classes of {self._dataset_name!r}"
                    )
        else:
            cat_ids = sorted({a["category_id"] for a in gts + dts})
            thing_classes = [str(c) for c in cat_ids]

        area_ranges = self._area_ranges or default_area_ranges(ndim)
        results: Dict[str, Dict[str, float]] = OrderedDict()
        dump = {
            "dataset": self._dataset_name,
            "max_dets": self._max_dets,
            "area_ranges": list(area_ranges),
            "images": len(img_ids),
            "left_out_partial_images": partial,
        }
        for task in self._tasks:
            if not dts:
                logger.warning("COCO3DEvaluator: no detections; %s metrics are NaN", task)
            coco_eval = COCOeval3D(
                gts, dts, img_ids, cat_ids, task, ndim, area_ranges, self._max_dets
            )
            coco_eval.evaluate()
            coco_eval.accumulate()
            stats = coco_eval.summarize()
            res = {k: (float(v) * 100 if v >= 0 else float("nan")) for k, v in zip(_AP_KEYS, stats)}
            for cat, ap in coco_eval.per_category_ap().items():
                name = thing_classes[cat_ids.index(cat)]
                res[f"AP-{name}"] = ap * 100
            results[task] = res
            dump[task] = {
                "metrics": res,
                "stats": {k: float(v) for k, v in zip(STAT_NAMES, stats)},
            }
            logger.info("Evaluation results for %s (%dD):\n%s", task, ndim, _table(res))
        if self._output_dir:
            from det3d.utils.file_io import write_json_atomic

            out_dir = self._output_dir
            write_json_atomic(
                os.path.join(out_dir, "coco3d_instances_results.json"), dts, keep_earlier=True
            )
            write_json_atomic(
                os.path.join(out_dir, "coco3d_results.json"), _nan_to_none(dump), keep_earlier=True
            )
        return results


def _table(res: Dict[str, float]) -> str:
    return "\n".join(f"  {k:>12s}: {v:7.3f}" for k, v in res.items())
