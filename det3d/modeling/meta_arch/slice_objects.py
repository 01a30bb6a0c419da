"""
3D objects of the 2.5D model: per-slice detections, linked into a label volume, become the same
``Instances`` the 3D model returns (boxes ``(N, 6)``, ``scores``, ``pred_classes``,
``pred_masks``), with rows numbered as the label volume's ids (row ``i`` = label ``i + 1``).
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from det3d.structures import Boxes, Instances

from ..slice_linking import SliceLinks

__all__ = ["SliceDetections", "linked_objects_to_instances"]


class SliceDetections:
    """
    What the 2.5D model keeps of each slice's detections once they are pasted into that slice's
    2D label image (row ``j`` = label ``j + 1``): per slice, ``scores``, ``objectness`` (the
    scores where the detections have none) and ``classes`` of its rows and ``areas`` (pixels each
    row got in the label image). Small tables, no masks.
    """

    def __init__(self, depth: int):
        self.scores: List[np.ndarray] = [np.zeros(0, np.float64)] * depth
        self.objectness: List[np.ndarray] = [np.zeros(0, np.float64)] * depth
        self.classes: List[np.ndarray] = [np.zeros(0, np.int64)] * depth
        self.areas: List[np.ndarray] = [np.zeros(0, np.int64)] * depth

    def set(
        self,
        z: int,
        scores: np.ndarray,
        classes: np.ndarray,
        label_image: np.ndarray,
        objectness: Optional[np.ndarray] = None,
    ):
        self.scores[z] = np.asarray(scores, np.float64)
        self.objectness[z] = np.asarray(scores if objectness is None else objectness, np.float64)
        self.classes[z] = np.asarray(classes, np.int64)
        counts = np.bincount(label_image.ravel(), minlength=len(scores) + 1)
        self.areas[z] = counts[1 : len(scores) + 1]


def _object_votes(
    links: SliceLinks, dets: SliceDetections, num_objects: int, num_classes: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Per object: score (and objectness) = the mean of its slices' scores (objectness) weighted by
    their areas; class = the class whose slices cover most of the object (ties: the lower class
    index).
    """
    area = np.zeros(num_objects + 1, np.float64)
    score_area = np.zeros(num_objects + 1, np.float64)
    objectness_area = np.zeros(num_objects + 1, np.float64)
    class_area = np.zeros((num_objects + 1, num_classes), np.float64)
    for z, (ids, objs) in enumerate(zip(links.ids, links.objects)):
        if len(ids) == 0:
            continue
        rows = ids - 1  # label j + 1 is row j of the slice's detections
        a = dets.areas[z][rows].astype(np.float64)
        np.add.at(area, objs, a)
        np.add.at(score_area, objs, a * dets.scores[z][rows])
        np.add.at(objectness_area, objs, a * dets.objectness[z][rows])
        np.add.at(class_area, (objs, dets.classes[z][rows]), a)
    scores = np.divide(score_area, area, out=np.zeros_like(area), where=area > 0)[1:]
    objectness = np.divide(objectness_area, area, out=np.zeros_like(area), where=area > 0)[1:]
    return scores, objectness, class_area[1:].argmax(axis=1)


def linked_objects_to_instances(
    labels: np.ndarray,
    links: SliceLinks,
    dets: SliceDetections,
    num_classes: int,
    mask_resolution: Sequence[int],
) -> Tuple[Instances, torch.Tensor]:
    """
    Args:
        labels: int32 ``(D, H, W)`` linked label volume, objects ``1..K``.
        links: from :func:`link_slice_instances` (``return_links=True``).
        dets: the slices' detections, rows matching the 2D ids of ``links``.
        num_classes: number of foreground classes.
        mask_resolution: ``(D, H, W)`` size of each object's ``pred_masks`` entry.

    Returns:
        Instances of image size ``(D, H, W)``, rows in decreasing score: ``pred_boxes``
        (tight ``[a, b+1)`` boxes), ``scores``, ``objectness``, ``pred_classes``,
        ``pred_masks`` ``(K, *res)``:
        the fraction of each mask cell's voxels inside the object, the object's box resampled
        by area averaging (or repeated where the box is smaller), so that
        :func:`det3d.modeling.postprocessing.paste_mask` gives the object back to within a
        voxel at its border. And the label volume relabelled so that row ``i`` has label ``i + 1``.
    """
    shape = tuple(labels.shape)
    num = int(labels.max(initial=0))
    scores, objectness, classes = _object_votes(links, dets, num, num_classes)
    order = np.argsort(-scores, kind="stable")
    relabel = np.zeros(num + 1, np.int32)
    relabel[order + 1] = np.arange(1, num + 1, dtype=np.int32)
    labels = relabel[labels]
    boxes = np.zeros((num, 6), np.float32)
    res = tuple(int(r) for r in mask_resolution)
    masks = torch.zeros((num,) + res, dtype=torch.float32)
    for i, sl in enumerate(ndimage.find_objects(labels, max_label=num)):
        if sl is None:  # cannot happen for linked labels; keep the row empty if it does
            continue
        boxes[i, :3] = [s.start for s in sl][::-1]
        boxes[i, 3:] = [s.stop for s in sl][::-1]
        crop = torch.from_numpy(labels[sl] == i + 1).float()[None, None]
        masks[i] = F.interpolate(crop, size=res, mode="area")[0, 0]
    inst = Instances(shape)
    inst.pred_boxes = Boxes(torch.from_numpy(boxes))
    inst.scores = torch.from_numpy(scores[order].astype(np.float32))
    inst.objectness = torch.from_numpy(objectness[order].astype(np.float32))
    inst.pred_classes = torch.from_numpy(classes[order].astype(np.int64))
    inst.pred_masks = masks
    return inst, torch.from_numpy(labels)
