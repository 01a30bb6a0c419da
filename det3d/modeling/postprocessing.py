"""
Post-processing of detections: rescaling to the original volume and pasting per-instance masks
into an instance label volume, N-D.

Pasting works one instance at a time, each only inside its own box, so peak memory is one label
volume plus one box-sized mask, never (number of instances x volume).
"""

from typing import Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

from det3d.structures import Instances
from det3d.utils.axes import array_shape_to_box_order

__all__ = [
    "detector_postprocess",
    "paste_mask",
    "paste_mask_probs",
    "instances_to_label_volume",
    "VOXEL_OWNERS",
    "mask_boxes",
    "expand_boxes",
    "label_rank",
]

# F.interpolate's linear mode per number of spatial dims
INTERP_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}
# who gets a voxel two pasted instances claim (see instances_to_label_volume)
VOXEL_OWNERS = ("mask_prob", "first")


def check_voxel_owner(voxel_owner: str) -> str:
    """``voxel_owner`` if it is one of :data:`VOXEL_OWNERS`, else a ValueError naming the key."""
    if voxel_owner not in VOXEL_OWNERS:
        raise ValueError(
            f"MODEL.ROI_HEADS.LABELS_VOXEL_OWNER {voxel_owner!r} is not one of {VOXEL_OWNERS}"
        )
    return voxel_owner


def label_rank(instances: Instances) -> torch.Tensor:
    """
    What decides whether a detection enters ``instance_labels``: its ``objectness`` (the
    foreground probability of its RoI) where the instances have that field, else its ``scores``.

    Returns:
        (N,) the field itself (not a copy).
    """
    return instances.objectness if instances.has("objectness") else instances.scores


def expand_boxes(boxes: torch.Tensor, factor: float) -> torch.Tensor:
    """
    Scales boxes about their centres by ``factor`` on every axis.

    Args:
        boxes: (N, 2*ndim).

    Returns:
        (N, 2*ndim), a new tensor (``boxes`` itself when ``factor`` is 1).
    """
    if factor == 1.0:
        return boxes
    ndim = boxes.shape[-1] // 2
    center = (boxes[:, :ndim] + boxes[:, ndim:]) / 2
    half = (boxes[:, ndim:] - boxes[:, :ndim]) * (factor / 2)
    return torch.cat([center - half, center + half], dim=1)


def mask_boxes(instances: Instances) -> torch.Tensor:
    """
    The boxes the instances' ``pred_masks`` live in: ``pred_mask_boxes`` where the mask head
    predicted masks on enlarged boxes (``MODEL.ROI_MASK_HEAD.BOX_EXPAND``), else ``pred_boxes``.
    """
    if instances.has("pred_mask_boxes"):
        return instances.pred_mask_boxes.tensor
    return instances.pred_boxes.tensor


def detector_postprocess(results: Instances, output_size: Sequence[int]) -> Instances:
    """
    Rescales detections from the model's input size (``results.image_size``) to ``output_size``
    (the original spatial shape, array order), each axis by its own factor, clips the boxes to it
    and drops boxes that became empty. ``pred_masks`` stay at RoI resolution: they live in box
    coordinates and need no rescaling; their ``pred_mask_boxes``, if any, are rescaled but not
    clipped (a mask may reach beyond the image, pasting cuts it).

    Args:
        results: ``pred_boxes`` (or ``proposal_boxes``) and other per-instance fields.
        output_size: ``(D, H, W)`` / ``(H, W)``.

    Returns:
        Instances of image size ``output_size``.
    """
    output_size = tuple(int(s) for s in output_size)
    input_size = tuple(results.image_size)
    if len(output_size) != len(input_size):
        raise ValueError(
            f"detector_postprocess: output_size {output_size} and the results' image size "
            f"{input_size} have different dimensionality"
        )
    factors = [
        o / i
        for o, i in zip(array_shape_to_box_order(output_size), array_shape_to_box_order(input_size))
    ]
    results = Instances(output_size, **results.get_fields())
    if results.has("pred_boxes"):
        boxes_field = "pred_boxes"
    elif results.has("proposal_boxes"):
        boxes_field = "proposal_boxes"
    else:
        return results
    boxes = results.get(boxes_field).clone()
    boxes.scale(*factors)
    boxes.clip(output_size)
    results.set(boxes_field, boxes)
    if results.has("pred_mask_boxes"):
        mboxes = results.pred_mask_boxes.clone()
        mboxes.scale(*factors)
        results.pred_mask_boxes = mboxes
    return results[boxes.nonempty()]


def _box_region(box: torch.Tensor, image_shape: Sequence[int]):
    """Integer region of a box, per array axis: (start, stop) unclipped, and clipped."""
    ndim = len(image_shape)
    full, clipped = [], []
    for axis in range(ndim):
        k = ndim - 1 - axis  # box coordinate running along this axis
        lo = int(torch.round(box[k]).item())
        hi = int(torch.round(box[ndim + k]).item())
        hi = max(hi, lo + 1)  # a box thinner than a voxel still covers the voxel it is in
        full.append((lo, hi))
        clipped.append((min(max(lo, 0), image_shape[axis]), min(max(hi, 0), image_shape[axis])))
    return full, clipped


def paste_mask(
    mask: torch.Tensor,
    box: torch.Tensor,
    image_shape: Sequence[int],
    threshold: float = 0.5,
) -> Tuple[Tuple[slice, ...], torch.Tensor]:
    """
    Resamples one RoI mask into the voxels of its box.

    The box is rounded to whole voxels per axis (``round(x0)`` to ``round(x1)``, at least one
    voxel: the voxels whose centres lie in the box). The mask is resized to that integer extent
    with ``F.interpolate`` (bilinear / trilinear, ``align_corners=False``), so the mask's cells
    spread evenly over the box extent with cell centres at their natural positions; the result is
    then cut to the image and thresholded (``>= threshold``).

    Args:
        mask: (*M) mask probabilities at RoI resolution.
        box: (2*ndim,) box in image voxel coordinates.
        image_shape: ``(D, H, W)`` / ``(H, W)``.
        threshold: probability at and above which a voxel belongs to the instance.

    Returns:
        tuple[slice]: the region of the image (array order) the mask covers.
        Tensor: bool, the shape of that region.
    """
    slices, probs = paste_mask_probs(mask, box, image_shape)
    return slices, probs >= threshold


def paste_mask_probs(
    mask: torch.Tensor, box: torch.Tensor, image_shape: Sequence[int]
) -> Tuple[Tuple[slice, ...], torch.Tensor]:
    """
    :func:`paste_mask` before the threshold: the region of the image the mask covers and the
    float32 probabilities resampled into it.
    """
    ndim = len(image_shape)
    if mask.dim() != ndim or box.numel() != 2 * ndim:
        raise ValueError(
            f"paste_mask: mask {tuple(mask.shape)} and box {tuple(box.shape)} do not match "
            f"image shape {tuple(image_shape)}"
        )
    full, clipped = _box_region(box, image_shape)
    slices = tuple(slice(lo, hi) for lo, hi in clipped)
    if any(hi <= lo for lo, hi in clipped):
        return slices, torch.zeros([max(hi - lo, 0) for lo, hi in clipped])
    size = [hi - lo for lo, hi in full]
    resized = F.interpolate(
        mask[None, None].float(), size=size, mode=INTERP_MODE[ndim], align_corners=False
    )[0, 0]
    crop = tuple(slice(c_lo - f_lo, c_hi - f_lo) for (f_lo, _), (c_lo, c_hi) in zip(full, clipped))
    return slices, resized[crop]


def instances_to_label_volume(
    instances: Instances,
    image_shape: Optional[Sequence[int]] = None,
    threshold: float = 0.5,
    score_threshold: float = 0.0,
    overlap_threshold: float = 0.5,
    voxel_owner: str = "mask_prob",
    foreground: Optional[torch.Tensor] = None,
    foreground_threshold: float = 0.5,
    claim_threshold: Optional[float] = None,
    iou_power: float = 0.0,
) -> torch.Tensor:
    """
    Pastes instances into an int32 label volume: row ``i`` gets label ``i + 1``.

    Whether an instance enters, and in which order, is decided by its ``objectness`` (the
    foreground probability of its RoI, see :func:`fast_rcnn_inference`) where the instances have
    that field, else by ``scores``: a detection whose class probability is split between two
    classes (0.45 each) is still a confident object and must not vanish from the label volume.
    Instances are pasted in decreasing objectness (ties: decreasing score, so of two detections
    of one RoI the one of its most likely class is pasted); with ``iou_power`` > 0 and a
    ``pred_box_iou`` field (the box head's estimate of each box's IoU with its object), in
    decreasing ``objectness * pred_box_iou ** iou_power``: of a box around one object and a
    confident box spanning it and its touching neighbour, the better box comes first, and the
    overlap rule then leaves the other out. A voxel that two pasted instances
    claim goes, with ``voxel_owner="mask_prob"``, to the one whose mask probability is higher
    there (ties: the earlier), so touching objects split along the line where their masks
    cross; with ``"first"`` it stays with the earlier instance (Detectron2's panoptic rule).
    Without ``pred_masks`` every voxel of the box is claimed. Instances below
    ``score_threshold`` are left out (their label does not occur), and so is an instance whose
    mask is claimed by earlier ones for more than ``overlap_threshold`` of its voxels (as
    Detectron2 merges panoptic outputs): a second detection of the same object, e.g. under
    another class, would otherwise leave its rim behind as a spurious object.

    With ``foreground`` (a foreground head's probabilities, see
    det3d/modeling/foreground_head.py), an instance claims only voxels the head calls foreground
    (``>= foreground_threshold``), and with ``claim_threshold`` it claims them down to that mask
    probability (usually lower than ``threshold``): the mask says which object a voxel may
    belong to, the head where the object ends. The overlap rule still looks at the instance's
    own mask (``>= threshold``, foreground only) and, with ``"mask_prob"``, counts as taken only
    the voxels earlier instances hold at ``>= threshold``: with the lower threshold, the outskirts
    of a mask reach into its neighbours' and would make a touching object look like a duplicate.

    Args:
        instances: ``pred_boxes``, ``scores``, optionally ``objectness`` and ``pred_masks``
            (N, *M) in ``pred_mask_boxes`` (if present) or ``pred_boxes``, boxes in the
            coordinates of ``image_shape``.
        image_shape: spatial shape of the output; default ``instances.image_size``.
        threshold: mask probability threshold: the instance's mask.
        score_threshold: the objectness (or score) an instance needs to be pasted.
        overlap_threshold: the largest fraction of an instance's voxels that may already be
            claimed for it to be pasted; 1.0 pastes every instance that has a free voxel.
        voxel_owner: "mask_prob" or "first" (``MODEL.ROI_HEADS.LABELS_VOXEL_OWNER``).
        foreground: None, or float ``image_shape`` foreground probabilities.
        foreground_threshold: foreground probability a voxel needs to be claimed.
        claim_threshold: None (= ``threshold``), or the mask probability down to which an
            instance claims voxels.
        iou_power: weight of ``pred_box_iou`` in the pasting order (0: not used;
            ``MODEL.ROI_HEADS.LABELS_IOU_POWER``); it does not decide which instances enter.

    Returns:
        Tensor: int32 ``image_shape`` volume, on the instances' device.
    """
    check_voxel_owner(voxel_owner)
    if iou_power < 0:
        raise ValueError(f"instances_to_label_volume: iou_power must be >= 0, got {iou_power}")
    image_shape = tuple(int(s) for s in (image_shape or instances.image_size))
    if not instances.has("pred_boxes"):
        return torch.zeros(image_shape, dtype=torch.int32)
    boxes = mask_boxes(instances)
    labels = torch.zeros(image_shape, dtype=torch.int32, device=boxes.device)
    if foreground is not None:
        if tuple(foreground.shape) != image_shape:
            raise ValueError(
                f"instances_to_label_volume: foreground {tuple(foreground.shape)} does not match "
                f"the label volume {image_shape}"
            )
        foreground = foreground.to(boxes.device) >= foreground_threshold
    if len(boxes) == 0:
        return labels
    if instances.has("scores"):
        rank = label_rank(instances)
        key = rank
        if iou_power > 0 and instances.has("pred_box_iou"):
            key = rank * instances.pred_box_iou.clamp(min=0.0) ** iou_power
        # sort by score, then stably by key: key decides, score breaks its ties
        order = torch.argsort(instances.scores, descending=True, stable=True)
        order = order[torch.argsort(key[order], descending=True, stable=True)]
        order = order[rank[order] >= score_threshold].tolist()
    else:
        order = range(len(instances))
    masks = instances.pred_masks if instances.has("pred_masks") else None
    claims = masks is not None and claim_threshold is not None
    # the mask probability of each voxel's owner (one float volume, whatever the instance count)
    owner_prob = (
        torch.zeros(image_shape, device=boxes.device)
        if voxel_owner == "mask_prob" and masks is not None
        else None
    )
    for i in order:
        if masks is not None:
            slices, probs = paste_mask_probs(masks[i], boxes[i], image_shape)
            probs = probs.to(labels.device)
            local = probs >= threshold
        else:
            _, clipped = _box_region(boxes[i], image_shape)
            slices = tuple(slice(lo, hi) for lo, hi in clipped)
            local = torch.ones([max(hi - lo, 0) for lo, hi in clipped], dtype=torch.bool)
        region = labels[slices]  # a view: writing into it writes into labels
        local = local.to(region.device)
        fg = foreground[slices] if foreground is not None else None
        if fg is not None:
            local &= fg
        size = int(local.sum())
        held = owner_prob[slices] if owner_prob is not None else None
        taken = region != 0
        if held is not None and claims:
            # a voxel an earlier instance took only below its mask threshold (a claim's
            # outskirts) does not make this one a duplicate
            taken &= held >= threshold
        if size == 0 or int((local & ~taken).sum()) < (1.0 - overlap_threshold) * size:
            continue
        if claims:  # pasted: it claims its voxels down to claim_threshold
            local = probs >= claim_threshold
            if fg is not None:
                local &= fg
        if held is None:
            free = local & (region == 0)
        else:
            free = local & ((region == 0) | (probs > held))
            held[free] = probs[free]
        region[free] = i + 1
    return labels
