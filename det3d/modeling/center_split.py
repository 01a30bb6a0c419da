"""
Splitting instances that cover two touching objects, by a predicted centre map.

A detector trained from scratch sometimes puts one confident box around two touching objects;
its mask then covers both, and no score threshold or overlap rule can bring the second object
back. A centre map (StarDist's "object probability": each object voxel's distance to the nearest
voxel outside its object, divided by the largest such distance in the object) has one peak per
convex object and falls to near 0 where two objects touch, whatever their brightness. Inside
each instance of the label volume, :func:`split_by_centers` looks for more than one peak
(connected regions of centre probability >= a threshold) and, where it finds them, floods the
instance from those peaks down the centre map, as a seeded watershed does, so the instance's
voxels are shared out along the valleys between them.

:func:`center_targets` computes the map from ground-truth masks for training
(:class:`det3d.modeling.foreground_head.FPNForegroundCenterHead`).
"""

from typing import List, Optional, Tuple

import numpy as np
import torch
from scipy import ndimage as ndi

from det3d.structures import BitMasks, Instances
from det3d.structures.label_volume import label_objects

__all__ = ["center_targets", "split_by_centers", "split_instances"]

# levels the centre map is quantised into for the flood: finer costs time, coarser merges valleys
FLOOD_LEVELS = 32


def center_targets(masks: torch.Tensor) -> torch.Tensor:
    """
    The normalised distance map of a volume's objects.

    Args:
        masks: bool (K, *spatial), one mask per object (objects may touch; the distance is to
            the nearest voxel outside the object, so a voxel next to another object has
            distance 1).

    Returns:
        float32 ``(*spatial)``: in each object, its voxels' Euclidean distance (in voxels) to the
        nearest voxel outside it, divided by the object's largest; 0 outside every object. Where
        objects overlap, the larger value.
    """
    m = masks.detach().cpu().numpy().astype(bool)
    out = np.zeros(m.shape[1:], dtype=np.float32)
    for k in range(m.shape[0]):
        box = ndi.find_objects(m[k].astype(np.uint8))
        if not box or box[0] is None:
            continue
        # pad the object's box by one voxel, so its box edge is outside it
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box[0])
        obj = np.pad(m[k][sl], 1)
        dist = ndi.distance_transform_edt(obj)[(slice(1, -1),) * obj.ndim]
        dist = (dist / dist.max()).astype(np.float32)
        np.maximum(out[sl], dist, out=out[sl])
    return torch.from_numpy(out).to(masks.device)


def _flood(seeds: np.ndarray, center: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """
    Grows labelled ``seeds`` over ``inside`` in decreasing ``center``: at each level (high to low)
    the labels spread through face-adjacent voxels at or above it until they stop; a voxel two
    labels reach in the same step takes the larger label. Voxels of ``inside`` no seed reaches
    through ``inside`` (a separate fragment) take the label of the nearest labelled voxel.
    """
    labels = seeds.copy()
    footprint = ndi.generate_binary_structure(labels.ndim, 1)
    for level in np.linspace(1.0, 0.0, FLOOD_LEVELS + 1)[1:]:
        allowed = inside & (center >= level)
        while True:
            grown = ndi.grey_dilation(labels, footprint=footprint)
            new = allowed & (labels == 0) & (grown > 0)
            if not new.any():
                break
            labels[new] = grown[new]
    left = inside & (labels == 0)
    if left.any():
        _, index = ndi.distance_transform_edt(labels == 0, return_indices=True)
        labels[left] = labels[tuple(index)][left]
    return labels


def split_by_centers(
    labels: torch.Tensor,
    center: torch.Tensor,
    seed_threshold: float = 0.5,
    min_seed_voxels: int = 8,
    first_label: Optional[int] = None,
) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """
    Splits each instance of a label volume that holds more than one centre.

    An instance's seeds are the connected regions (face connectivity) of its voxels where
    ``center >= seed_threshold``, of at least ``min_seed_voxels`` voxels each. An instance with
    two or more seeds is flooded from them (:func:`_flood`); the part of its largest seed keeps
    its label, each other part gets a new label, counting up from ``first_label``.

    Args:
        labels: int (*spatial) label volume, 0 = background.
        center: float (*spatial) centre probabilities (see :func:`center_targets`).
        seed_threshold: centre probability a seed voxel needs.
        min_seed_voxels: smallest seed; smaller regions are taken for noise.
        first_label: the first new label; default one above the largest label present. It must
            be above every label present.

    Returns:
        Tensor: the label volume after splitting (same dtype and device as ``labels``).
        list[(int, int)]: ``(new label, label it was split from)``, in increasing new label.
    """
    if tuple(center.shape) != tuple(labels.shape):
        raise ValueError(
            f"split_by_centers: center {tuple(center.shape)} does not match the label volume "
            f"{tuple(labels.shape)}"
        )
    lab = labels.detach().cpu().numpy().copy()
    cen = center.detach().float().cpu().numpy()
    top = int(lab.max()) if lab.size else 0
    next_label = top + 1 if first_label is None else int(first_label)
    if next_label <= top:
        raise ValueError(f"split_by_centers: first_label {next_label} is not above label {top}")
    splits: List[Tuple[int, int]] = []
    for k, box in enumerate(ndi.find_objects(lab), start=1):
        if box is None:
            continue
        inside = lab[box] == k
        c = cen[box]
        seeds, n = ndi.label(inside & (c >= seed_threshold))
        if n < 2:
            continue
        sizes = np.bincount(seeds.reshape(-1), minlength=n + 1)
        sizes[0] = 0
        kept = [s for s in np.argsort(-sizes, kind="stable") if sizes[s] >= min_seed_voxels]
        if len(kept) < 2:
            continue
        ranked = np.zeros(n + 1, dtype=np.int64)  # seed -> 1 (largest) .. len(kept)
        ranked[kept] = np.arange(1, len(kept) + 1)
        parts = _flood(ranked[seeds], c, inside)
        region = lab[box]  # a view
        for j in range(2, len(kept) + 1):
            region[inside & (parts == j)] = next_label
            splits.append((next_label, k))
            next_label += 1
    return torch.from_numpy(lab).to(labels.device), splits


def split_instances(
    instances: Instances, labels: torch.Tensor, splits: List[Tuple[int, int]]
) -> Instances:
    """
    The instances that go with a label volume split by :func:`split_by_centers` (called with
    ``first_label=len(instances) + 1``): row ``i`` still has label ``i + 1``, and each new label
    gets a row, a copy of the row it was split from (score, class, objectness). Every row whose
    label was split, and every new one, gets the tight box of its voxels in ``labels`` as
    ``pred_boxes`` (and ``pred_mask_boxes``), and as ``pred_masks`` its voxels resampled to the
    mask grid over that box, so pasting the mask gives back about the part.

    Args:
        instances: detections of the volume ``labels`` is the label volume of.
        labels: int (*spatial) label volume after splitting.
        splits: ``(new label, label it was split from)`` from :func:`split_by_centers`.

    Returns:
        Instances: ``len(instances) + len(splits)`` rows (``instances`` itself without splits).
    """
    if not splits:
        return instances
    n = len(instances)
    new = [s for s, _ in splits]
    if new != list(range(n + 1, n + 1 + len(splits))):
        raise ValueError(
            f"split_instances: new labels {new} do not follow the {n} instances' labels"
        )
    parents = torch.tensor([p - 1 for _, p in splits], device=instances.pred_boxes.device)
    out = Instances.cat([instances, instances[parents]])
    changed = sorted(set(new) | {p for _, p in splits})
    objects = label_objects(labels.cpu().numpy())
    where = {int(i): k for k, i in enumerate(objects.ids)}
    rows = torch.tensor([label - 1 for label in changed])
    boxes = torch.from_numpy(objects.boxes[[where[label] for label in changed]])
    boxes = boxes.to(out.pred_boxes.tensor)
    out.pred_boxes.tensor[rows] = boxes
    if out.has("pred_mask_boxes"):
        out.pred_mask_boxes.tensor[rows] = boxes
    if out.has("pred_masks"):
        # as the mask head's targets are made; one part at a time, so memory stays one volume's
        masks = out.pred_masks.clone()
        for row, box in zip(rows.tolist(), boxes):
            part = BitMasks((labels == row + 1)[None])
            masks[row] = part.crop_and_resize(box[None], masks.shape[1:], threshold=None)[0]
        out.pred_masks = masks
    return out
