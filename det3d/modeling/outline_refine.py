"""
Refining the outlines of a label volume with the image: each object's own threshold.

A Mask R-CNN trained from scratch on a CPU budget places an object's outline from features that
see the image at full resolution only through a few voxels; in low-contrast, noisy volumes its
outlines come out ragged. A classical cue does better there: smooth the image a little, and
threshold each object halfway between its own brightness and that of the background around it
(objects in one volume differ in brightness, so one global threshold would not do). The
detector still decides which objects exist and which voxels each may reach: an object can only
change within ``grow`` voxels of its outline and never takes another object's voxels.

:func:`refine_outlines` does this per object, on the object's box padded by a few voxels, so its
cost does not grow with (objects x volume size). ``TEST.OUTLINE_REFINE`` turns it on for
``GeneralizedRCNN3D``'s ``instance_labels``.
"""

from typing import Sequence, Tuple, Union

import numpy as np
import torch
from scipy import ndimage as ndi

__all__ = ["refine_outlines", "check_refine_args"]

# fewer voxels than this in an object's core or its background ring: too few to trust a median
MIN_VOXELS = 8


def check_refine_args(ndim: int, sigma=1.0, level: float = 0.5, grow: int = 3, ring=(2, 5)):
    """Raises ValueError, naming the ``TEST.OUTLINE_REFINE`` key, for values it cannot use."""
    sig = [float(s) for s in (sigma if isinstance(sigma, (list, tuple)) else [sigma])]
    if len(sig) not in (1, ndim) or any(not np.isfinite(s) or s < 0 for s in sig):
        raise ValueError(
            f"TEST.OUTLINE_REFINE.SIGMA {sigma!r} must be one value or {ndim} (one per axis, "
            "array order), each >= 0 voxels"
        )
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"TEST.OUTLINE_REFINE.LEVEL {level!r} must lie in (0, 1)")
    if int(grow) != grow or grow < 0:
        raise ValueError(f"TEST.OUTLINE_REFINE.GROW {grow!r} must be an integer >= 0 (voxels)")
    if len(ring) != 2 or not 0 <= ring[0] < ring[1] or any(int(r) != r for r in ring):
        raise ValueError(
            f"TEST.OUTLINE_REFINE.BACKGROUND_RING {list(ring)!r} must be two integers "
            "0 <= inner < outer (voxels from the object)"
        )
    return sig if len(sig) == ndim else sig * ndim


def _object_threshold(smooth, mask, background) -> Union[Tuple[float, float], None]:
    core = ndi.binary_erosion(mask)
    if core.sum() < MIN_VOXELS:
        core = mask
    if core.sum() < MIN_VOXELS or background.sum() < MIN_VOXELS:
        return None
    inside, outside = float(np.median(smooth[core])), float(np.median(smooth[background]))
    if inside == outside:
        return None
    return inside, outside


def refine_outlines(
    labels: torch.Tensor,
    image: torch.Tensor,
    sigma: Union[float, Sequence[float]] = 1.0,
    level: float = 0.5,
    grow: int = 3,
    ring: Sequence[int] = (2, 5),
) -> torch.Tensor:
    """
    Re-draws each object's outline in ``labels`` at its own threshold of the smoothed image.

    For each object: the image, Gaussian-smoothed with ``sigma``, is thresholded at
    ``outside + level * (inside - outside)``, where ``inside`` is the median over the object's
    voxels one voxel in from its outline and ``outside`` the median over a shell ``ring`` voxels
    from it that keeps ``ring[0]`` voxels from every object. Objects darker than their background
    keep the voxels below the threshold. Only a band of ``grow`` voxels on either side of the
    object's outline changes: its voxels deeper inside stay, and of its other voxels and the
    unlabelled ones within ``grow`` voxels outside, those on its side of the threshold join them.
    The object becomes the connected part (face connectivity) of these that overlaps it most. An
    unlabelled voxel two objects reach goes to the nearer one (ties: the lower label). An object
    whose core or background is too small to measure (fewer than 8 voxels), or whose refined part
    would be empty, keeps its voxels unchanged, so no object is lost.

    Args:
        labels: int (*spatial) label volume, 0 = background.
        image: float (*spatial), the same grid.
        sigma: Gaussian sigma in voxels, one value or one per axis (0 = no smoothing).
        level: where between background and object the threshold lies.
        grow: how far (voxels) an object may grow beyond its outline.
        ring: inner and outer distance (voxels) of the background shell.

    Returns:
        int32 Tensor like ``labels``, on its device.
    """
    if tuple(image.shape) != tuple(labels.shape):
        raise ValueError(
            f"refine_outlines: image {tuple(image.shape)} does not match labels "
            f"{tuple(labels.shape)}"
        )
    sig = check_refine_args(labels.dim(), sigma, level, grow, ring)
    lab = labels.detach().cpu().numpy()
    img = image.detach().float().cpu().numpy()
    smooth = ndi.gaussian_filter(img, sig, mode="nearest") if max(sig) > 0 else img
    out = np.zeros(lab.shape, dtype=np.int32)
    # for unlabelled voxels two objects reach: the distance to the object that holds them
    nearest = np.full(lab.shape, np.inf, dtype=np.float32)
    # how far each voxel is from every object: one transform for all objects' background shells
    near_any = ndi.distance_transform_edt(lab == 0)
    # the box holds every voxel the object may reach and its whole shell
    pad = max(int(grow), int(ring[1])) + 1
    for obj, box in enumerate(ndi.find_objects(lab), start=1):
        if box is None:
            continue
        box = tuple(
            slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, lab.shape)
        )
        local = lab[box]
        mask = local == obj
        dist = ndi.distance_transform_edt(~mask)
        background = (dist > ring[0]) & (dist <= ring[1]) & (near_any[box] > ring[0])
        new = None
        levels = _object_threshold(smooth[box], mask, background)
        if levels is not None:
            inside, outside = levels
            threshold = outside + level * (inside - outside)
            side = (smooth[box] > threshold) if inside > outside else (smooth[box] < threshold)
            # only the band within `grow` voxels of the outline changes
            deep = ndi.distance_transform_edt(mask) > grow
            new = (side & (dist <= grow) & ((local == 0) | mask)) | deep
            parts, n = ndi.label(new)
            if n > 1:
                overlap = np.bincount(parts[mask], minlength=n + 1)
                overlap[0] = 0
                new = parts == int(overlap.argmax())
            if not new.any() or not (new & mask).any():
                new = None
        if new is None:
            new = mask
        target, closest = out[box], nearest[box]  # views
        target[new & mask] = obj
        grown = new & ~mask & (dist < closest)
        target[grown] = obj
        closest[grown] = dist[grown]
    return torch.from_numpy(out).to(labels.device)
