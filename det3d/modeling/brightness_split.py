"""
Splitting an instance of the label volume that holds two objects of different brightness.

Where two objects touch, a detector trained from scratch sometimes gives one confident detection
whose mask covers both. The second object's own detection, even with a good mask, then stays out
of the label volume: the overlap rule finds most of its voxels taken. Objects in one volume differ
in brightness (nuclei by their DNA content and staining; ``toy3d`` draws each object's contrast at
random), while one object is about evenly bright inside. So the brightness tells the two cases
apart. If the voxels the left-out detection claims in the instance are brighter or darker than the
rest of the instance, beyond what the noise explains, the instance holds two objects, and the
left-out detection takes its part. A detection of a part of one object, or a second detection of
it, claims voxels as bright as the rest and changes nothing.

:func:`split_by_brightness` tries the left-out detections in decreasing objectness, each against
the instance that holds most of its mask. It compares the two parts' cores (``erosion`` voxels in
from each part's outline, past the blur of the boundary) by two figures:

* the effect size: the difference of their means over the pooled standard deviation
  (``min_effect``);
* Student's t (``scipy.stats.ttest_ind``, pooled variance): the difference over its standard
  error (``min_t``).

Both must pass. The effect size alone would split off small parts whose few voxels differ by
chance; t alone would split a large instance on any tiny, real difference. Each try
works on the union of the detection's box and the instance's box, so the cost does not grow with
(detections x volume size).
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage as ndi
from scipy import stats

from det3d.structures import Instances

from .postprocessing import label_rank, mask_boxes, paste_mask_probs

__all__ = ["split_by_brightness", "check_split_args"]

# fewer voxels than this in a mask or a part's core: too few to measure a brightness
MIN_VOXELS = 10
# a left-out detection is tried against the instance that holds at least this share of its mask
# (the overlap rule left it out for about as much)
HELD_SHARE = 0.5
# a detection that claims more than this share of the instance is a second detection of it
MAX_SHARE = 0.8


def check_split_args(min_effect=0.35, min_t=6.0, min_objectness=0.1, erosion=2) -> None:
    """Raises ValueError, naming the ``TEST.BRIGHTNESS_SPLIT`` key, for values it cannot use."""
    for key, value in (("MIN_EFFECT", min_effect), ("MIN_T", min_t)):
        if not float(value) >= 0:
            raise ValueError(f"TEST.BRIGHTNESS_SPLIT.{key} {value!r} must be >= 0")
    if not 0.0 <= float(min_objectness) <= 1.0:
        raise ValueError(
            f"TEST.BRIGHTNESS_SPLIT.MIN_OBJECTNESS {min_objectness!r} must lie in [0, 1]"
        )
    if int(erosion) != erosion or erosion < 0:
        raise ValueError(
            f"TEST.BRIGHTNESS_SPLIT.EROSION {erosion!r} must be an integer >= 0 (voxels)"
        )


def _brightness_step(
    image: np.ndarray, part: np.ndarray, rest: np.ndarray, erosion: int
) -> Optional[Tuple[float, float]]:
    """(effect size, |t|) of the brightness of ``part``'s core against ``rest``'s, or None where
    a core is too small to measure."""
    if erosion:
        part = ndi.binary_erosion(part, iterations=erosion)
        rest = ndi.binary_erosion(rest, iterations=erosion)
    a, b = image[part].astype(np.float64), image[rest].astype(np.float64)
    if len(a) < MIN_VOXELS or len(b) < MIN_VOXELS:
        return None
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # noise-free: any difference is a step
        return (np.inf, np.inf) if a[0] != b[0] else None
    t = abs(float(stats.ttest_ind(a, b).statistic))
    # t is the difference of the means over its standard error, sd * sqrt(1/n_a + 1/n_b)
    return t * np.sqrt(1.0 / len(a) + 1.0 / len(b)), t


def _enclosing(slices: Sequence[slice], other: Sequence[slice]) -> Tuple[slice, ...]:
    return tuple(slice(min(s.start, o.start), max(s.stop, o.stop)) for s, o in zip(slices, other))


def split_by_brightness(
    labels: torch.Tensor,
    image: torch.Tensor,
    instances: Instances,
    foreground: Optional[torch.Tensor] = None,
    mask_threshold: float = 0.5,
    min_effect: float = 0.35,
    min_t: float = 6.0,
    min_objectness: float = 0.1,
    erosion: int = 2,
) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """
    Lets detections left out of ``labels`` take their part of an instance that differs in
    brightness from the rest of it (see the module docstring).

    A left-out detection (row ``i`` whose label ``i + 1`` is absent) of objectness at least
    ``min_objectness`` is tried when at least half of its mask lies in one instance and it claims
    at most 80% of that instance. If the brightness of its part differs enough from the rest's,
    it takes that part (and the free voxels of its mask) as label ``i + 1``, and the instance
    keeps the largest connected piece of what is left (the other pieces, cut off by the
    detection, go to it).

    Args:
        labels: int (*spatial) label volume from :func:`instances_to_label_volume`, row ``i`` of
            ``instances`` as label ``i + 1``.
        image: float (*spatial), one channel of the input on the same grid.
        instances: the detections that were pasted: ``pred_masks``, ``pred_boxes`` (or
            ``pred_mask_boxes``), and ``objectness`` (else ``scores``).
        foreground: None, or bool (*spatial): a detection's mask is also limited to it (the
            foreground head's voxels, as in pasting).
        mask_threshold: mask probability at which a voxel is in a detection's mask.
        min_effect: the smallest difference of the two parts' mean brightness, in pooled
            standard deviations of their voxels.
        min_t: the smallest Student's t of that difference.
        min_objectness: the objectness (or score) a left-out detection needs to be tried.
        erosion: voxels peeled off each part before measuring it.

    Returns:
        (the new label volume, same dtype and device; a list of ``(instance label, detection
        label)`` per split, in the order made).
    """
    check_split_args(min_effect, min_t, min_objectness, erosion)
    shape = tuple(labels.shape)
    if tuple(image.shape) != shape:
        raise ValueError(
            f"split_by_brightness: image {tuple(image.shape)} does not match the label volume "
            f"{shape}"
        )
    if foreground is not None and tuple(foreground.shape) != shape:
        raise ValueError(
            f"split_by_brightness: foreground {tuple(foreground.shape)} does not match the label "
            f"volume {shape}"
        )
    if len(instances) == 0 or not instances.has("pred_masks"):
        return labels, []
    lab = labels.cpu().numpy().copy()
    img = image.detach().float().cpu().numpy()
    fg = foreground.cpu().numpy().astype(bool) if foreground is not None else None
    rank = label_rank(instances).cpu()
    boxes = mask_boxes(instances)
    regions = {i + 1: s for i, s in enumerate(ndi.find_objects(lab)) if s is not None}
    splits = []
    for i in torch.argsort(rank, descending=True, stable=True).tolist():
        label = i + 1
        if float(rank[i]) < min_objectness:
            break
        if label in regions:
            continue
        box, probs = paste_mask_probs(instances.pred_masks[i], boxes[i], shape)
        mask = probs.cpu().numpy() >= mask_threshold
        if fg is not None:
            mask &= fg[box]
        if mask.sum() < MIN_VOXELS:
            continue
        held = lab[box][mask]
        ids, counts = np.unique(held[held > 0], return_counts=True)
        if len(ids) == 0 or counts.max() < HELD_SHARE * mask.sum():
            continue
        owner = int(ids[counts.argmax()])
        region = _enclosing(box, regions[owner])
        local = lab[region]  # a view: writing into it writes into lab
        det = np.zeros(local.shape, dtype=bool)
        det[tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region))] = mask
        inst = local == owner
        part, rest = inst & det, inst & ~det
        if part.sum() > MAX_SHARE * inst.sum():
            continue
        step = _brightness_step(img[region], part, rest, int(erosion))
        if step is None or step[0] < min_effect or step[1] < min_t:
            continue
        local[part | (det & (local == 0))] = label
        pieces, n = ndi.label(local == owner)
        if n > 1:
            keep = 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
            local[(pieces > 0) & (pieces != keep)] = label
        regions[label] = region
        splits.append((owner, label))
    return torch.from_numpy(lab).to(device=labels.device, dtype=labels.dtype), splits
