"""
Plans a Mask R-CNN config from a dataset's fingerprint (:func:`dataset_fingerprint`), so a new
dataset trains without hand-tuning. Every planned key comes with the reason it got its value;
:func:`write_planned_config` writes both into a yaml file a user can read and edit.

The rules, in the order they are applied (each a short function below):

1. **Spacing.** Volumes of one spacing are used as they are; mixed spacings are resampled to the
   median (``INPUT.TARGET_SPACING``). All sizes below are in voxels of that grid.
2. **Strides.** x/y follow the FPN (4, 8, 16, 32 at p2..p5). The z stride of each level is the
   largest power of two whose physical step does not exceed the x/y step, so anisotropic volumes
   keep their few z voxels (a z voxel 4× deeper than wide is not downsampled until p4).
3. **Anchors.** One size per level, starting at the smallest objects (5th percentile of the x/y
   side) and doubling per level; the z aspect ratio is the objects' median depth / x-y side; x/y
   ratios 0.5 and 2 only for boxes elongated in x/y. The RPN keeps Detectron2's IoU thresholds
   with low-quality matches (lowering them to the objects' best-anchor IoU, or adding anchor
   shapes, measured worse).
4. **RoI heads.** Pooled box features 5 bins per axis; mask resolution from the median object
   size (a mask twice as fine as the object is
   wasted, one far coarser loses the boundary between touching objects); RoIs pool from the level
   where they span 4-8 feature cells per axis (median objects from p2); RoIs per volume from the
   objects per volume, and the mask branch's from a median volume's objects; a full-resolution
   foreground head sets where objects end in the label volume; where objects touch, an instance
   holding two of them of different brightness is split (``TEST.BRIGHTNESS_SPLIT``), and the box
   head estimates each box's IoU with its object (``ROI_BOX_HEAD.IOU_HEAD``), by which the label
   volume orders detections, so a box spanning two touching objects comes after theirs.
5. **Input.** Whole volumes when they are small, else crops of at least 2.5x the largest common
   object; flips on every axis, x/y quarter turns when x and y have the same spacing; the pixel
   mean/std of the percentile-normalised intensities; where objects touch, copies of objects
   pasted against others (``INPUT.COPY_PASTE``).
6. **Schedule.** AdamW, warm-up, a step at 85%; training fills 90% of the time budget
   (``SOLVER.TIME_BUDGET_MINUTES``): ``MAX_ITER`` is a first estimate from the seconds per
   iteration ``tools/plan.py`` measures on this machine, and the run re-fits it to its own
   measured speed (``det3d.engine.hooks.TimeBudget``).
7. **Inference precision.** ``TEST.AMP`` (autocast) where ``tools/plan.py``'s probe measured
   inference under it at least 1.1 times faster than in float32 on this machine.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Plan", "plan_config", "anchor_coverage"]

# The share of the time budget that training fills; evaluation on the test split follows it.
_TRAINING_SHARE = 0.9

# Outlines are re-drawn from the image (TEST.OUTLINE_REFINE) where a threshold halfway between
# object and background would get more than this fraction of single voxels wrong (contrast-to-
# noise below 4.65): there the network, which sees the image at full resolution through a few
# voxels only, leaves ragged outlines.
OUTLINE_REFINE_VOXEL_ERROR = 0.01


@dataclass
class Plan:
    """Planned config values (full key -> value) and, for each, why."""

    values: Dict[str, Any] = field(default_factory=dict)
    reasons: Dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: Any, why: str) -> None:
        self.values[key] = value
        self.reasons[key] = why

    def apply(self, cfg) -> None:
        """Sets every planned key of ``cfg`` (unfrozen)."""
        for key, value in self.values.items():
            node = cfg
            *path, last = key.split(".")
            for k in path:
                node = node[k]
            node[last] = value

    def report(self) -> str:
        width = max(len(k) for k in self.values)
        return "\n".join(
            f"{k:<{width}}  {_fmt(self.values[k])}\n{'':<{width}}  ({self.reasons[k]})"
            for k in self.values
        )


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def _pow2_floor(x: float) -> int:
    return 1 << max(int(math.floor(math.log2(max(x, 1.0)))), 0)


def _sizes(fp: dict, scale: Sequence[float]) -> np.ndarray:
    """(N, 3) object box extents (D, H, W) in voxels of the planned grid."""
    s = np.asarray(fp["objects"]["sizes_voxels_sample"], dtype=np.float64)
    return s * np.asarray(scale)[None, :]


def anchor_coverage(
    sizes: np.ndarray,
    anchor_sizes: Sequence[float],
    xy_ratios: Sequence[float],
    z_ratios: Sequence[float],
) -> np.ndarray:
    """
    Best IoU between each object box and any anchor shape, both centred at the same point (the
    best an anchor on the object's centre can do).

    Args:
        sizes: (N, 3) object extents (D, H, W).
        anchor_sizes: x/y sides; xy_ratios: height / width; z_ratios: depth / x-y side.

    Returns:
        (N,) best IoU per object.
    """
    shapes = []
    for s in anchor_sizes:
        for a in xy_ratios:
            for r in z_ratios:
                shapes.append((s * r, s * math.sqrt(a), s / math.sqrt(a)))  # (d, h, w)
    a = np.asarray(shapes)[None, :, :]  # (1, A, 3)
    b = sizes[:, None, :]  # (N, 1, 3)
    inter = np.minimum(a, b).prod(axis=2)
    union = a.prod(axis=2) + b.prod(axis=2) - inter
    return (inter / union).max(axis=1)


def _plan_spacing(fp: dict, plan: Plan) -> np.ndarray:
    sp = np.asarray(fp["spacing"]["median"], dtype=np.float64)
    if fp["spacing"]["all_equal"]:
        plan.set("INPUT.TARGET_SPACING", [], "every volume has the same spacing: no resampling")
        return np.ones(3)
    plan.set(
        "INPUT.TARGET_SPACING",
        [float(round(v, 4)) for v in sp],
        "volumes of several spacings are resampled to the median spacing",
    )
    return np.ones(3)  # sizes in the fingerprint are close to the median grid already


def _plan_strides(fp: dict, plan: Plan) -> Tuple[List[int], List[int]]:
    """z and x/y strides of stem conv, stem pool, res2..res5; returns cumulative (z, xy)."""
    sp = np.asarray(fp["spacing"]["median"], dtype=np.float64)
    ratio = sp[0] / min(sp[1], sp[2])  # z voxel depth in x/y voxels
    xy_cum = [2, 4, 4, 8, 16, 32]  # after stem conv, stem pool, res2, res3, res4, res5
    z_cum, prev = [], 1
    min_depth = fp["shape"]["min"][0]
    for s in xy_cum:
        z = min(_pow2_floor(s / ratio), 2 * prev, _pow2_floor(max(min_depth / 2, 1)))
        z = max(z, prev)  # strides never shrink
        z_cum.append(z)
        prev = z
    steps = [z_cum[0]] + [b // a for a, b in zip(z_cum, z_cum[1:])]
    plan.set(
        "MODEL.RESNETS.STEM_STRIDE",
        [steps[0], 2, 2],
        f"z voxels are {ratio:.2g}x as deep as x/y voxels: z is downsampled only while its "
        f"physical step stays within the x/y step (z strides {z_cum[2:]} at p2..p5)",
    )
    plan.set("MODEL.RESNETS.STEM_POOL_STRIDE", [steps[1], 2, 2], "as the stem stride")
    plan.set(
        "MODEL.RESNETS.STAGE_STRIDES",
        [[steps[2], 1, 1]] + [[z, 2, 2] for z in steps[3:]],
        "x/y halve per stage (FPN); z as the stem stride",
    )
    return z_cum[2:], xy_cum[2:]


def _plan_anchors(fp: dict, plan: Plan, sizes: np.ndarray) -> Dict[str, Any]:
    d, h, w = sizes[:, 0], sizes[:, 1], sizes[:, 2]
    xy = np.sqrt(h * w)
    zr = d / xy
    z_ratio = max(float(round(np.median(zr) * 4) / 4), 0.25)
    ar = h / w
    lo, hi = np.percentile(ar, [10, 90])
    # rotated objects of every orientation have boxes near square in x/y: one ratio; elongated
    # boxes (aligned with the axes) need 0.5 and 2 too
    xy_ratios = [1.0] if lo > 0.5 and hi < 2.0 else [0.5, 1.0, 2.0]
    base = float(2 ** round(math.log2(max(float(np.percentile(xy, 5)), 4.0))))
    levels = [[base * 2**k] for k in range(5)]
    cov = anchor_coverage(sizes, [lv[0] for lv in levels], xy_ratios, [z_ratio])
    plan.set(
        "MODEL.ANCHOR_GENERATOR.SIZES",
        levels,
        "one size per level from the smallest objects up (5th percentile "
        f"{np.percentile(xy, 5):.1f} voxels wide in x/y, largest {xy.max():.0f}); best-anchor "
        f"IoU median {np.median(cov):.2f}, 5th percentile {np.percentile(cov, 5):.2f}",
    )
    plan.set(
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
        [xy_ratios],
        f"object height/width 10th-90th percentile {lo:.2f}-{hi:.2f}",
    )
    plan.set(
        "MODEL.ANCHOR_GENERATOR.Z_ASPECT_RATIOS",
        [[z_ratio]],
        f"median object depth / x-y side: {np.median(zr):.2f} voxels",
    )
    plan.set(
        "MODEL.RPN.IOU_THRESHOLDS",
        [0.3, 0.7],
        "Detectron2's; every object also gets its best anchors as positives (low-quality "
        "matches), which matters in 3D, where few anchors reach 0.7 (measured on toy3d: "
        "thresholds lowered to the objects' anchor IoU gave F1@0.5 0.86 -> 0.82)",
    )
    return {"base": base, "z_ratio": z_ratio, "xy": xy, "levels": levels}


def _plan_heads(fp: dict, plan: Plan, sizes: np.ndarray, anchors: Dict[str, Any]) -> None:
    z_ratio = anchors["z_ratio"]
    # One resolution on every axis (Detectron2's config takes an int here, so planned files merge
    # into a Detectron2 config too); pooled bins are spread over the box, whatever its shape.
    plan.set(
        "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
        5,
        "5 bins per axis (7 measured no better on the synthetic data, nor on toy3d)",
    )
    med = np.median(sizes, axis=0)  # (D, H, W)
    mask = int(np.clip(round(float(np.median(anchors["xy"])) / 2), 6, 12))
    plan.set(
        "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION",
        mask,
        f"median object is {med.round(1).tolist()} voxels (D, H, W): masks (2x the pooled "
        "size) about as fine as the objects' x/y voxels",
    )
    # p2, the finest level the mask branch pools from, has the stem's and its pool's x/y stride
    v = plan.values
    p2_xy = int(v["MODEL.RESNETS.STEM_STRIDE"][2]) * int(v["MODEL.RESNETS.STEM_POOL_STRIDE"][2])
    cells = float(med[2]) / p2_xy
    refine = 16 if cells < 8 else 0
    plan.set(
        "MODEL.ROI_MASK_HEAD.IMAGE_REFINE_DIM",
        refine,
        f"the median object ({med[2]:.0f} voxels in x) spans {cells:.1f} cells of p2 (x/y stride "
        f"{p2_xy}): "
        + (
            "too coarse to place its boundary, so the mask head also reads the image voxels"
            if refine
            else "fine enough; the mask head reads features only"
        ),
    )
    plan.set(
        "MODEL.FOREGROUND_HEAD.NAME",
        "FPNForegroundHead",
        "outlines at the input's voxels, not the mask grid's: the masks say which object a voxel "
        "belongs to, a full-resolution foreground head where objects end (measured on toy3d: "
        "matched objects' IoU 0.82 from the masks alone, 0.94 with the gt foreground in its place)",
    )
    gmean = float(np.median(np.prod(sizes, axis=1) ** (1 / 3)))
    canonical = max(int(round(anchors["base"] * 2 * z_ratio ** (1 / 3))), 1)
    plan.set(
        "MODEL.ROI_HEADS.CANONICAL_BOX_SIZE",
        canonical,
        f"boxes of the p3 anchor's size (cube-root side {canonical}) and up to twice it pool "
        f"from p2, so a RoI spans 4-8 feature cells per axis (median object cube-root side "
        f"{gmean:.1f}); from p3 it spanned 2-4 for the box head's 5 bins",
    )
    plan.set("MODEL.ROI_HEADS.CANONICAL_LEVEL", 2, "see CANONICAL_BOX_SIZE")
    per_vol = fp["objects"]["per_volume"]
    # a quarter of the RoIs are foreground and each costs a mask-head pass (the dearest part of
    # a 3D Mask R-CNN step): about 1.5 foreground RoIs per object, at least 64 RoIs in all
    rois = int(min(512, max(64, _pow2_floor(6 * per_vol["p95"]))))
    plan.set(
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        rois,
        f"up to {per_vol['p95']:.0f} objects per volume (95th percentile): about 6 RoIs each, "
        "a quarter of them foreground",
    )
    # the mask branch costs half of a CPU step at ~1.5 foreground RoIs per object; one per object
    # of a median volume keeps every object's mask trained and gives the rest more iterations
    mask_rois = max(int(np.ceil(per_vol["p50"])), 1)
    plan.set(
        "MODEL.ROI_MASK_HEAD.TRAIN_ROIS_PER_IMAGE",
        mask_rois,
        f"a median volume holds {per_vol['p50']:.0f} objects: the mask branch (half of a CPU "
        "step) trains on about one foreground RoI per object, drawn at random, so the budget "
        "buys more iterations (measured in bench runs: toy3d 2150 -> 2800 iterations, F1@0.5 "
        "0.914 -> 0.939 and 0.945, SEG 0.806 -> 0.808; synthetic SEG 0.961 -> 0.956 twice)",
    )
    dets = int(max(100, 4 * per_vol["p100"]))
    plan.set("TEST.DETECTIONS_PER_IMAGE", dets, f"at most {per_vol['p100']:.0f} objects per volume")
    plan.set("TEST.MAX_DETS", dets, "as TEST.DETECTIONS_PER_IMAGE")
    plan.set(
        "MODEL.ROI_HEADS.LABELS_SCORE_THRESH_TEST",
        0.3,
        "a model trained from scratch on a CPU budget is unsure of some real objects; the overlap "
        "rule, not the objectness, keeps their duplicates out (measured on the training split: "
        "toy3d SEG 0.759 -> 0.773, recall 0.878 -> 0.898, precision 0.984 -> 0.963; synthetic "
        "unchanged)",
    )
    post = int(max(200, 20 * per_vol["p100"]))
    plan.set("MODEL.RPN.POST_NMS_TOPK_TRAIN", post, "about 20 proposals per object")
    plan.set("MODEL.RPN.POST_NMS_TOPK_TEST", post, "as in training")
    touching = float(fp["objects"]["touching_fraction"])
    plan.set(
        "TEST.BRIGHTNESS_SPLIT.ENABLED",
        touching > 0,
        f"{100 * touching:.0f}% of the objects touch another"
        + (
            ": where one detection holds two of them, a left-out detection takes its part if that "
            "part differs in brightness from the rest (measured on nine trained toy3d models, "
            "evaluation only: test SEG -0.003 to +0.019, +0.005 on average; training split "
            "+0.017)"
            if touching > 0
            else ": no merged pair to split"
        ),
    )
    plan.set(
        "MODEL.ROI_BOX_HEAD.IOU_HEAD.ENABLED",
        touching > 0,
        f"{100 * touching:.0f}% of the objects touch another"
        + (
            ": the box head also estimates each box's IoU with its object, and the label volume "
            "pastes detections in decreasing objectness x that estimate, so a confident box "
            "spanning two touching objects comes after their own boxes and the overlap rule "
            "leaves it out (measured on three trained toy3d models, evaluation only, against "
            "objectness alone: test SEG +0.020, +0.000, +0.000; toy3d_test128 +0.006, +0.006, "
            "+0.000; training split -0.001, +0.001, -0.003; +0.003 on average)"
            if touching > 0
            else ": no box spans two objects"
        ),
    )


def _plan_input(fp: dict, plan: Plan, sizes: np.ndarray, z_cum: List[int]) -> None:
    shape = np.asarray(fp["shape"]["median"], dtype=np.float64)
    voxels = float(np.prod(shape))
    sp = np.asarray(fp["spacing"]["median"])
    div = np.array([z_cum[-1], 32, 32])  # the coarsest stride (p5) per axis
    if voxels <= 64 * 128 * 128:
        plan.set("INPUT.CROP_SIZE", [], f"volumes of {shape.astype(int).tolist()} train whole")
    else:
        want = np.maximum(2.5 * np.percentile(sizes, 95, axis=0), [16, 64, 64])
        crop = np.minimum(np.ceil(want / div) * div, np.ceil(shape / div) * div).astype(int)
        plan.set(
            "INPUT.CROP_SIZE",
            crop.tolist(),
            "crops of 2.5x the 95th-percentile object, multiples of the coarsest stride",
        )
    _plan_tiles(fp, plan, div)
    flips = [0, 1, 2]
    plan.set("INPUT.RANDOM_FLIP_AXES", flips, "flips on every axis")
    _plan_copy_paste(fp, plan, voxels)
    plan.set(
        "TEST.MASK_FLIP_AXES",
        flips,
        "masks averaged over the 8 flips the model trained on (8 backbone passes at inference; "
        "measured on toy3d: SEG 0.679 -> 0.700, synthetic 0.876 -> 0.883)",
    )
    plan.set(
        "TEST.FLIP_OBJECTNESS",
        True,
        "objectness, which decides whether a detection enters the label volume, averaged over the "
        "same flips (the box branch on the mask flips' backbone passes; measured on four trained "
        "toy3d models at objectness 0.3: test SEG +0.007, F1@0.5 +0.015 on average)",
    )
    plan.set(
        "INPUT.ROTATE90_XY",
        bool(abs(sp[1] - sp[2]) < 1e-6),
        "x/y quarter turns where x and y have the same spacing",
    )
    stats = fp["intensity"].get("0")
    if stats:
        plan.set(
            "INPUT.NORM_PERCENTILES",
            [1.0, 99.8],
            f"per-volume percentile normalisation; foreground/background contrast-to-noise "
            f"{stats['contrast_to_noise']:.2f}",
        )
        _plan_outline_refine(abs(stats["contrast_to_noise"]), sp, plan)


def _plan_tiles(fp: dict, plan: Plan, div: np.ndarray) -> None:
    """Test-time counts per input voxel, and the tiles of det3d-predict, from the training input."""
    crop = plan.values.get("INPUT.CROP_SIZE") or []
    train = np.asarray(crop if len(crop) else fp["shape"]["median"], dtype=np.float64)
    train = train.round().astype(int)
    plan.set(
        "TEST.COUNTS_REFERENCE_SHAPE",
        train.tolist(),
        "proposals and detections per input are counted for the training input's "
        f"{train.tolist()} voxels; a larger volume or tile holds proportionally more objects and "
        "gets proportionally more (measured on toy3d_test128, 128^3 volumes of 40-88 objects, "
        "row 65's model: SEG 0.723 with the 64^3 counts, 0.753 with 8 times them)",
    )
    largest = np.array([fp["objects"]["size_voxels"][a]["p100"] for a in range(3)], np.float64)
    # an object is kept by the tile whose core holds its centroid and must reach no further than
    # the margin around the core, about half the overlap: the largest object's extent and a
    # quarter more for objects whose centroid is off their box's centre
    overlap = (2 * np.ceil(0.625 * largest)).astype(int)
    size = (np.ceil(np.maximum(train, 2 * overlap) / div) * div).astype(int)
    plan.set(
        "TEST.TILE.OVERLAP",
        overlap.tolist(),
        f"1.25x the largest object's extent ({largest.astype(int).tolist()} voxels): every object "
        "fits within half the overlap around the core of the tile that keeps it",
    )
    plan.set(
        "TEST.TILE.SIZE",
        size.tolist(),
        "the training input, at least twice the overlap (so a tile's core is no thinner than its "
        "margins), in multiples of the coarsest stride",
    )


def _plan_copy_paste(fp: dict, plan: Plan, voxels: float) -> None:
    touching = float(fp["objects"]["touching_fraction"])
    if touching <= 0:
        plan.set("INPUT.COPY_PASTE.NUM_TOUCHING", 0, "no object touches another: no pair to add")
        return
    crop = plan.values.get("INPUT.CROP_SIZE") or []
    share = float(np.prod(crop)) / voxels if len(crop) else 1.0
    per_input = float(fp["objects"]["per_volume"]["p50"]) * min(share, 1.0)
    copies = max(1, int(round(per_input / 2)))
    plan.set(
        "INPUT.COPY_PASTE.NUM_TOUCHING",
        copies,
        f"{100 * touching:.0f}% of the objects touch another, and touching objects are what a "
        f"detector misses: {copies} copies of objects pasted against others per training input "
        f"(half of its {per_input:.1f} objects; measured on toy3d, four trainings with copies "
        f"against one without: test SEG 0.817 -> 0.823 on average (0.806-0.835), touching "
        f"recall@0.5 0.53 -> 0.65, mask AP 42.3 -> 45.7, within the spread of trainings)",
    )
    plan.set(
        "INPUT.COPY_PASTE.MIN_KEEP",
        0.5,
        "a copy may cover up to half of an object it meets (Simple Copy-Paste's occlusion)",
    )


def _plan_outline_refine(cnr: float, spacing: np.ndarray, plan: Plan) -> None:
    # a threshold halfway between object and background gets this fraction of single voxels wrong
    voxel_error = 0.5 * math.erfc(cnr / 2 / math.sqrt(2))
    share = f"{100 * voxel_error:.1f}%" if voxel_error >= 5e-4 else "under 0.05%"
    if voxel_error <= OUTLINE_REFINE_VOXEL_ERROR:
        plan.set(
            "TEST.OUTLINE_REFINE.ENABLED",
            False,
            f"contrast-to-noise {cnr:.2f}: single voxels tell object from background (a halfway "
            f"threshold errs on {share} of them), and the network's outlines "
            "are as good as the image's (measured on synthetic: re-drawn from the image, SEG "
            "0.961 -> 0.946)",
        )
        return
    plan.set(
        "TEST.OUTLINE_REFINE.ENABLED",
        True,
        f"contrast-to-noise {cnr:.2f}: a halfway threshold errs on {share} of single voxels, "
        "and the network's outlines come out ragged; each object's outline is "
        "re-drawn at its own threshold of the smoothed image (measured on six trained toy3d "
        "models: test SEG +0.011 to +0.020, training split +0.012)",
    )
    sigma = [round(float(spacing.min() / s), 3) for s in spacing]
    plan.set(
        "TEST.OUTLINE_REFINE.SIGMA",
        sigma,
        "one voxel of the finest axis, the same distance in micrometres on every axis: noise "
        "pooled over a voxel's neighbours without rounding the outline (measured on toy3d: 0.8 "
        "and 1.2 voxels did less)",
    )


def plan_config(
    fingerprint: dict,
    num_classes: int,
    seconds_per_iter: Optional[float] = None,
    budget_minutes: float = 30.0,
    inference_seconds: Optional[Tuple[float, float]] = None,
) -> Plan:
    """
    Args:
        fingerprint: from :func:`dataset_fingerprint`.
        num_classes: the dataset's number of classes.
        seconds_per_iter: measured time of one training iteration of the planned model
            (``tools/plan.py`` measures it); None leaves ``SOLVER.MAX_ITER`` to the caller.
        budget_minutes: training time to fill.
        inference_seconds: measured seconds per volume at inference in float32 and under
            autocast (``TEST.AMP``), or None (``TEST.AMP`` is left to the base config).

    Returns:
        Plan: full key -> value, with reasons.
    """
    plan = Plan()
    plan_model_size(plan)
    scale = _plan_spacing(fingerprint, plan)
    sizes = _sizes(fingerprint, scale)
    z_cum, _ = _plan_strides(fingerprint, plan)
    anchors = _plan_anchors(fingerprint, plan, sizes)
    _plan_heads(fingerprint, plan, sizes, anchors)
    _plan_input(fingerprint, plan, sizes, z_cum)
    plan.set("MODEL.ROI_HEADS.NUM_CLASSES", int(num_classes), "the dataset's classes")
    if seconds_per_iter:
        minutes = round(budget_minutes * _TRAINING_SHARE, 2)
        plan.set(
            "SOLVER.TIME_BUDGET_MINUTES",
            minutes,
            f"{_TRAINING_SHARE:.0%} of the {budget_minutes:g}-minute budget for the training "
            "iterations, the rest for evaluation; the run re-fits MAX_ITER to its measured speed "
            "(the probe's few steps were 5-20% off the speed of whole runs)",
        )
        iters = int(minutes * 60 / seconds_per_iter)
        iters = max(iters // 50 * 50 if iters >= 200 else iters, 1)
        plan.set(
            "SOLVER.MAX_ITER",
            iters,
            f"a first estimate: {minutes:g} minutes at {seconds_per_iter:.2f} s per iteration "
            "measured on this machine",
        )
        plan.set("SOLVER.STEPS", [int(iters * 0.85)] if iters >= 20 else [], "one decay at 85%")
        plan.set(
            "SOLVER.WARMUP_ITERS", min(50, iters // 5), "warm-up: 50 steps, a fifth of short runs"
        )
    if inference_seconds:
        _plan_inference_precision(plan, *inference_seconds)
    return plan


# autocast at inference where it is at least this much faster than float32
_AMP_MIN_SPEEDUP = 1.1


def _plan_inference_precision(plan: Plan, float32: float, autocast: float) -> None:
    faster = float32 / autocast if autocast > 0 else 0.0
    on = faster >= _AMP_MIN_SPEEDUP
    plan.set(
        "TEST.AMP.ENABLED",
        on,
        f"inference took {float32:.2f} s per training volume in float32 and {autocast:.2f} s "
        f"under autocast on this machine ({faster:.2f}x; autocast where >= "
        f"{_AMP_MIN_SPEEDUP:g}x): "
        + (
            "autocast; it left the label volumes' scores unchanged (measured with bfloat16 on "
            "trained models, SEG in float32 -> bfloat16: toy3d 0.7964 -> 0.7960 on the test "
            "split, 0.7881 -> 0.7883 on the training split, 0.7521 -> 0.7537 at 128^3; "
            "synthetic 0.9628 -> 0.9623 on the validation split, 0.9668 -> 0.9671 on the "
            "training split)"
            if on
            else "float32"
        ),
    )


# Model size and optimiser for a CPU budget: the demo model (9.4M parameters), which trains from
# scratch with AdamW in minutes; GPU plans start from it too and may widen it.
_CPU_MODEL = {
    "MODEL.RESNETS.DEPTH": 18,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 16,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 32,
    "MODEL.RESNETS.NORM": "GN",
    "MODEL.FPN.OUT_CHANNELS": 32,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 128,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 1000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 128,
    "MODEL.ROI_MASK_HEAD.NUM_CONV": 4,
    "MODEL.ROI_MASK_HEAD.LOSS_TYPE": "bce_dice",
    "SOLVER.IMS_PER_BATCH": 2,
    "SOLVER.OPTIMIZER": "ADAMW",
    "SOLVER.BASE_LR": 0.001,
    "SOLVER.WARMUP_ITERS": 50,
    "SOLVER.CLIP_GRADIENTS.ENABLED": True,
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "norm",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 5.0,
    "DATALOADER.NUM_WORKERS": 1,
}


def plan_model_size(plan: Plan) -> None:
    """The CPU-budget model and optimiser (see ``_CPU_MODEL``)."""
    for k, v in _CPU_MODEL.items():
        plan.set(k, v, "CPU budget: the demo model's size and optimiser (AdamW from scratch)")
    plan.set(
        "MODEL.ROI_MASK_HEAD.CONV_DIM",
        32,
        "the mask head runs on every foreground RoI at (2P)^3 voxels: at the demo's 64 channels "
        "it took 80% of a CPU step; 32 learn as fast per iteration (toy3d, 800 iterations: mask "
        "Dice 0.899 against 0.893) at 0.57x the step time, so the budget buys more iterations",
    )
