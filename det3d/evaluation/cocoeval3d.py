"""
COCO-style AP for N-D boxes and masks, built on pycocotools' ``COCOeval``.

``COCOeval3D`` keeps pycocotools' accumulation (precision/recall tables, 101-point interpolation)
and changes only what depends on dimensionality or speed:

* ground truth and detections are given as plain lists of dicts (no ``COCO`` index objects), with
  ``bbox`` = ``[x, y, (z,) w, h, (d)]`` (corner + size) and ``segmentation`` = N-D RLE;
* ``computeIoU``: box IoU in any ndim with the arithmetic of pycocotools' ``bbIou`` (so 2D results
  are identical), mask IoU with ``pycocotools.mask.iou`` on the 2D view of the RLEs (exact for
  N-D masks); crowd gt uses ``intersection / area(dt)`` as COCO does;
* ``evaluateImg``: COCO's greedy matching, computed over the pairs that can match at all instead of
  all ``T x D x G`` triples (same results; dense volumes have hundreds of objects);
* area ranges are volumes in 3D (defaults ``0, 16^3, 32^3, inf``) and COCO's in 2D;
* ``summarize`` reports at ``maxDets[-1]`` whatever it is (pycocotools hard-codes 100).
"""

import contextlib
import io
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
from pycocotools.cocoeval import COCOeval

from det3d.structures.rle import rle_iou

__all__ = ["COCOeval3D", "default_area_ranges", "box_iou_coco", "STAT_NAMES"]

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "ARmax",
    "ARs",
    "ARm",
    "ARl",
)


def default_area_ranges(ndim: int) -> tuple:
    """Boundaries (0, small/medium, medium/large, inf): COCO's in 2D, cell-sized volumes in 3D."""
    if ndim == 2:
        return (0, 32**2, 96**2, float("inf"))
    return (0, 16**ndim, 32**ndim, float("inf"))


def box_iou_coco(dt: np.ndarray, gt: np.ndarray, iscrowd: Sequence[int]) -> np.ndarray:
    """
    IoU of corner+size boxes in any ndim, with the operation order of pycocotools' ``bbIou``
    (bit-identical in 2D). For a crowd gt the union is the detection's volume.

    Args:
        dt: (D, 2k) boxes ``[x, y, (z,) w, h, (d)]``; gt: (G, 2k).
    Returns:
        (D, G) float64.
    """
    dt = np.asarray(dt, dtype=np.float64).reshape(-1, np.shape(dt)[-1] if np.size(dt) else 0)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, np.shape(gt)[-1] if np.size(gt) else 0)
    if dt.shape[0] == 0 or gt.shape[0] == 0:
        return np.zeros((dt.shape[0], gt.shape[0]))
    if dt.shape[1] != gt.shape[1] or dt.shape[1] % 2:
        raise ValueError(f"box_iou_coco: boxes of width {dt.shape[1]} and {gt.shape[1]}")
    k = dt.shape[1] // 2
    inter = None
    for a in range(k):
        lo = np.maximum(dt[:, None, a], gt[None, :, a])
        hi = np.minimum(dt[:, None, k + a] + dt[:, None, a], gt[None, :, k + a] + gt[None, :, a])
        w = np.maximum(hi - lo, 0.0)
        inter = w if inter is None else inter * w
    da = dt[:, k]
    ga = gt[:, k]
    for a in range(k + 1, 2 * k):
        da = da * dt[:, a]
        ga = ga * gt[:, a]
    crowd = np.asarray(iscrowd, dtype=bool)[None, :]
    union = np.where(crowd, da[:, None], (da[:, None] + ga[None, :]) - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


class COCOeval3D(COCOeval):
    """
    ``COCOeval`` over lists of annotation dicts, for 2D or 3D boxes and masks.

    Args:
        gts: dicts with ``image_id``, ``category_id``, ``bbox``, ``area``, ``iscrowd`` and, for
            ``segm``, ``segmentation`` (N-D RLE). ``ignore`` is honoured as in COCO.
        dts: dicts with ``image_id``, ``category_id``, ``bbox``, ``score`` and, for ``segm``,
            ``segmentation`` and ``area`` (for ``bbox`` the area is the box volume).
        img_ids: the evaluated images (images without gt or detections count too).
        cat_ids: the evaluated categories.
        iou_type: "bbox" or "segm".
        area_ranges: 4 boundaries (0, s, m, inf); default :func:`default_area_ranges`.
        max_dets: ``params.maxDets`` (3 values; AP uses the last).

    Use: ``e.evaluate(); e.accumulate(); e.summarize()``, then ``e.stats`` (12 values, 0-1,
    -1 where undefined, in the order of ``STAT_NAMES``).
    """

    def __init__(
        self,
        gts: List[dict],
        dts: List[dict],
        img_ids: Sequence,
        cat_ids: Sequence[int],
        iou_type: str,
        ndim: int,
        area_ranges: Optional[Sequence[float]] = None,
        max_dets: Sequence[int] = (1, 10, 100),
    ):
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"COCOeval3D: iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        super().__init__(None, None, iou_type)
        self.ndim = int(ndim)
        bounds = list(area_ranges if area_ranges is not None else default_area_ranges(self.ndim))
        if len(bounds) != 4 or sorted(bounds) != bounds:
            raise ValueError(f"area_ranges must be 4 increasing boundaries, got {bounds}")
        # COCO's "infinite" area is 1e5 ** 2; keep its value in 2D so results stay identical.
        bounds = [b if np.isfinite(b) else 1e5 ** max(self.ndim, 2) for b in bounds]
        p = self.params
        p.imgIds = list(img_ids)
        p.catIds = list(cat_ids)
        p.maxDets = [int(m) for m in max_dets]
        b = bounds
        p.areaRng = [[b[0], b[3]], [b[0], b[1]], [b[1], b[2]], [b[2], b[3]]]
        p.areaRngLbl = ["all", "small", "medium", "large"]
        width = 2 * self.ndim
        self._gt_list = [dict(g, id=i + 1) for i, g in enumerate(gts)]
        self._dt_list = []
        for i, d in enumerate(dts):
            d = dict(d, id=i + 1)
            if len(d["bbox"]) != width:
                raise ValueError(
                    f"Detection {i} (image {d['image_id']!r}) has a box of {len(d['bbox'])} "
                    f"values; expected {width}"
                )
            if iou_type == "bbox":
                d["area"] = float(np.prod(d["bbox"][self.ndim :]))
            elif d.get("segmentation") is None:
                raise KeyError(
                    f"Detection {i} (image {d['image_id']!r}) has no segmentation for segm"
                )
            self._dt_list.append(d)
        for i, g in enumerate(self._gt_list):
            if len(g["bbox"]) != width:
                raise ValueError(
                    f"Ground truth {i} (image {g['image_id']!r}) has a box of "
                    f"{len(g['bbox'])} values; expected {width}"
                )
            if iou_type == "segm" and g.get("segmentation") is None:
                raise KeyError(
                    f"Ground truth {i} (image {g['image_id']!r}) has no segmentation for segm"
                )

    # pycocotools prints progress; keep the logs clean.
    def evaluate(self):
        with contextlib.redirect_stdout(io.StringIO()):
            super().evaluate()

    def accumulate(self, p=None):
        with contextlib.redirect_stdout(io.StringIO()):
            super().accumulate(p)

    def _prepare(self):
        p = self.params
        imgs = set(p.imgIds)
        cats = set(p.catIds)
        self._gts, self._dts = defaultdict(list), defaultdict(list)
        for g in self._gt_list:
            if g["image_id"] in imgs and (not p.useCats or g["category_id"] in cats):
                g["ignore"] = int(bool(g.get("iscrowd", 0)))
                self._gts[g["image_id"], g["category_id"]].append(g)
        for d in self._dt_list:
            if d["image_id"] in imgs and (not p.useCats or d["category_id"] in cats):
                self._dts[d["image_id"], d["category_id"]].append(d)
        self.evalImgs = defaultdict(list)
        self.eval = {}

    def _sorted(self, img_id, cat_id):
        p = self.params
        if p.useCats:
            gt, dt = self._gts[img_id, cat_id], self._dts[img_id, cat_id]
        else:
            gt = [g for c in p.catIds for g in self._gts[img_id, c]]
            dt = [d for c in p.catIds for d in self._dts[img_id, c]]
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        return gt, [dt[i] for i in order]

    def computeIoU(self, imgId, catId):
        gt, dt = self._sorted(imgId, catId)
        if len(gt) == 0 and len(dt) == 0:
            return []
        dt = dt[: self.params.maxDets[-1]]
        iscrowd = [int(g.get("iscrowd", 0)) for g in gt]
        if len(gt) == 0 or len(dt) == 0:
            return np.zeros((len(dt), len(gt)))
        if self.params.iouType == "bbox":
            return box_iou_coco([d["bbox"] for d in dt], [g["bbox"] for g in gt], iscrowd)
        return rle_iou([d["segmentation"] for d in dt], [g["segmentation"] for g in gt], iscrowd)

    def evaluateImg(self, imgId, catId, aRng, maxDet):
        """COCO's per-image greedy matching (as pycocotools), visiting only pairs that can match."""
        p = self.params
        gt, dt = self._sorted(imgId, catId)
        if len(gt) == 0 and len(dt) == 0:
            return None
        g_ignore = np.array(
            [int(bool(g["ignore"]) or g["area"] < aRng[0] or g["area"] > aRng[1]) for g in gt],
            dtype=np.int64,
        )
        gtind = np.argsort(g_ignore, kind="mergesort")
        gt = [gt[i] for i in gtind]
        g_ignore = g_ignore[gtind]
        dt = dt[:maxDet]
        iscrowd = [bool(g.get("iscrowd", 0)) for g in gt]
        T, G, D = len(p.iouThrs), len(gt), len(dt)
        gtm = np.zeros((T, G))
        dtm = np.zeros((T, D))
        dtIg = np.zeros((T, D))
        ious = self.ious[imgId, catId]
        if G and D and len(ious):
            ious = np.asarray(ious)[:D, gtind]
            thrs = [min(float(t), 1 - 1e-10) for t in p.iouThrs]
            rows, cols = np.nonzero(ious >= min(thrs))
            cand: List[List[int]] = [[] for _ in range(D)]
            for r, c in zip(rows.tolist(), cols.tolist()):
                cand[r].append(c)  # increasing gt index within a detection, as COCO scans
            active = [d for d in range(D) if cand[d]]
            gt_ids = [g["id"] for g in gt]
            ign = g_ignore.tolist()
            for tind, thr in enumerate(thrs):
                taken = [False] * G
                for d in active:
                    best, m = thr, -1
                    row = ious[d]
                    for g in cand[d]:
                        if taken[g] and not iscrowd[g]:
                            continue
                        # Once matched to a regular gt, ignored gts (sorted last) cannot win.
                        if m > -1 and ign[m] == 0 and ign[g] == 1:
                            break
                        if row[g] < best:
                            continue
                        best, m = row[g], g
                    if m == -1:
                        continue
                    taken[m] = True
                    dtIg[tind, d] = ign[m]
                    dtm[tind, d] = gt_ids[m]
                    gtm[tind, m] = dt[d]["id"]
        outside = np.array([d["area"] < aRng[0] or d["area"] > aRng[1] for d in dt]).reshape((1, D))
        dtIg = np.logical_or(dtIg, np.logical_and(dtm == 0, np.repeat(outside, T, 0)))
        return {
            "image_id": imgId,
            "category_id": catId,
            "aRng": aRng,
            "maxDet": maxDet,
            "dtIds": [d["id"] for d in dt],
            "gtIds": [g["id"] for g in gt],
            "dtMatches": dtm,
            "gtMatches": gtm,
            "dtScores": [d["score"] for d in dt],
            "gtIgnore": g_ignore,
            "dtIgnore": dtIg,
        }

    def _stat(self, ap: bool, iou_thr=None, area="all", max_det=None) -> float:
        p = self.params
        aind = p.areaRngLbl.index(area)
        mind = p.maxDets.index(max_det if max_det is not None else p.maxDets[-1])
        s = self.eval["precision"] if ap else self.eval["recall"]
        if iou_thr is not None:
            s = s[np.flatnonzero(np.isclose(p.iouThrs, iou_thr))]
        s = s[..., aind, mind]
        s = s[s > -1]
        return float(np.mean(s)) if s.size else -1.0

    def summarize(self):
        """Fills ``self.stats`` (STAT_NAMES order) at ``maxDets[-1]``; prints nothing."""
        if not self.eval:
            raise RuntimeError("COCOeval3D.summarize: run evaluate() and accumulate() first")
        m = self.params.maxDets
        self.stats = np.array(
            [
                self._stat(True),
                self._stat(True, iou_thr=0.5),
                self._stat(True, iou_thr=0.75),
                self._stat(True, area="small"),
                self._stat(True, area="medium"),
                self._stat(True, area="large"),
                self._stat(False, max_det=m[0]),
                self._stat(False, max_det=m[1]),
                self._stat(False, max_det=m[2]),
                self._stat(False, area="small"),
                self._stat(False, area="medium"),
                self._stat(False, area="large"),
            ]
        )
        return self.stats

    def per_category_ap(self) -> Dict[int, float]:
        """AP (0-1, NaN where a category has no gt) per category id, all areas, maxDets[-1]."""
        precision = self.eval["precision"]
        out = {}
        for k, cat in enumerate(self.params.catIds):
            s = precision[:, :, k, 0, -1]
            s = s[s > -1]
            out[cat] = float(np.mean(s)) if s.size else float("nan")
        return out
