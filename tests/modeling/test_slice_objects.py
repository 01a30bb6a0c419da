"""
3D objects of the 2.5D model: linked per-slice detections become Instances like the 3D model's
(rows in decreasing score = label volume ids, boxes, class and score votes, and box-cropped
pred_masks that paste back to the objects), and COCO3DEvaluator scores them as such.
"""

import numpy as np
import torch

from det3d.data import make_synthetic_volume
from det3d.modeling import link_slice_instances
from det3d.modeling.meta_arch.slice_objects import SliceDetections, linked_objects_to_instances
from det3d.modeling.postprocessing import paste_mask


def _slices_of(gt: np.ndarray, scores: dict, classes: dict):
    """Per-slice 2D labels (row j = label j + 1 in each slice) and their detections."""
    depth = gt.shape[0]
    slice_labels = np.zeros_like(gt)
    dets = SliceDetections(depth)
    for z in range(depth):
        ids = [i for i in np.unique(gt[z]) if i]
        lut = np.zeros(gt.max() + 1, np.int32)
        lut[ids] = np.arange(1, len(ids) + 1)
        slice_labels[z] = lut[gt[z]]
        dets.set(z, [scores[i] for i in ids], [classes[i] for i in ids], slice_labels[z])
    return slice_labels, dets


def test_objects_rows_votes_and_masks():
    _, gt, _ = make_synthetic_volume((16, 48, 48), num_objects=5, size_range=(2.5, 5), seed=1)
    scores = {i: 0.5 + 0.1 * i for i in range(1, 6)}  # object 5 scores highest
    classes = {i: i % 3 for i in range(1, 6)}
    slice_labels, dets = _slices_of(gt, scores, classes)
    # one slice of object 2 says class 0 with a low score: the class covering most voxels wins
    z = int(np.nonzero((gt == 2).any(axis=(1, 2)))[0][0])
    row = int(slice_labels[z][gt[z] == 2][0]) - 1
    dets.classes[z][row], dets.scores[z][row], dets.objectness[z][row] = 0, 0.0, 0.0
    labels, links = link_slice_instances(slice_labels, iou_threshold=0.1, return_links=True)
    inst, relabelled = linked_objects_to_instances(labels, links, dets, 3, (8, 16, 16))
    assert len(inst) == 5 and inst.image_size == gt.shape
    assert inst.scores.tolist() == sorted(inst.scores.tolist(), reverse=True)
    assert torch.equal(inst.objectness, inst.scores)  # detections without objectness: scores
    for i in range(5):
        obj = relabelled.numpy() == i + 1
        (gt_id,) = np.unique(gt[obj])  # each object is exactly one ground-truth object
        assert np.array_equal(obj, gt == gt_id)
        assert int(inst.pred_classes[i]) == classes[gt_id]
        areas = obj.sum(axis=(1, 2))
        expected = scores[gt_id]
        if gt_id == 2:  # area-weighted mean with the one slice scored 0
            expected = scores[2] * (1 - areas[z] / areas.sum())
        assert abs(float(inst.scores[i]) - expected) < 1e-6
        zz, yy, xx = np.nonzero(obj)
        box = [xx.min(), yy.min(), zz.min(), xx.max() + 1, yy.max() + 1, zz.max() + 1]
        assert inst.pred_boxes.tensor[i].tolist() == box
        # pred_masks pasted into their box as COCO3DEvaluator does give the object back
        slices, local = paste_mask(inst.pred_masks[i], inst.pred_boxes.tensor[i], gt.shape, 0.5)
        pasted = np.zeros(gt.shape, bool)
        pasted[slices] = local.numpy()
        iou = (pasted & obj).sum() / (pasted | obj).sum()
        assert iou >= 0.9, (i, iou)


def test_empty_volume_gives_no_objects():
    labels = np.zeros((4, 8, 8), np.int32)
    labels, links = link_slice_instances(labels, return_links=True)
    inst, relabelled = linked_objects_to_instances(labels, links, SliceDetections(4), 2, (2, 4, 4))
    assert len(inst) == 0 and inst.pred_masks.shape == (0, 2, 4, 4)
    assert inst.pred_boxes.tensor.shape == (0, 6) and int(relabelled.max()) == 0
    assert relabelled.dtype == torch.int32
