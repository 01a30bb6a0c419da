"""
One ground-truth path (issue 12, points 6 and 14): training targets, the evaluators' ground truth
and the COCO-style export read a record through one reader with one overlap rule, and take their
boxes from one routine; label ids near 2**31 are handled by the ids present, not by the largest.
"""

import tracemalloc

import numpy as np
import pytest

from det3d.data import (
    DatasetMapper3D,
    label_volume_to_annotations,
    load_record_labels,
    write_volume,
)
from det3d.data.detection_utils import label_volume_to_instances
from det3d.evaluation.ground_truth import gt_coco_annotations, gt_label_volume
from det3d.structures import BoxMode
from det3d.structures.rle import encode_rle


def _overlapping_record():
    shape = (4, 8, 8)
    a = np.zeros(shape, bool)
    a[1:3, 1:5, 1:5] = True
    b = np.zeros(shape, bool)
    b[1:3, 3:7, 3:7] = True  # overlaps a on [1:3, 3:5, 3:5]
    annos = [
        {"bbox": [1, 1, 1, 5, 5, 3], "bbox_mode": BoxMode.XYZXYZ_ABS, "category_id": 0,
         "segmentation": encode_rle(m), "iscrowd": 0}
        for m in (a, b)
    ]
    annos[1]["category_id"] = 1
    rec = {"file_name": "mem.tif", "image_id": 0, "depth": 4, "height": 8, "width": 8,
           "spacing": (1.0, 1.0, 1.0), "annotations": annos}
    return rec, a, b


def test_training_and_evaluation_read_the_same_ground_truth():
    rec, a, b = _overlapping_record()
    train_labels, classes = load_record_labels(rec)
    eval_labels = gt_label_volume(rec)
    np.testing.assert_array_equal(train_labels, eval_labels)
    assert classes == {1: 0, 2: 1}
    # one rule: the earlier annotation keeps a voxel both claim
    assert (train_labels[a] == 1).all()
    assert (train_labels[b & ~a] == 2).all()


def _label_file_record(tmp_path, labels, classes=None):
    path = str(tmp_path / "lab.tif")
    write_volume(path, labels)
    image = str(tmp_path / "im.tif")
    write_volume(image, (labels > 0).astype(np.uint8) * 200)
    rec = {"file_name": image, "image_id": 0, "depth": labels.shape[0],
           "height": labels.shape[1], "width": labels.shape[2], "spacing": (1.0, 1.0, 1.0),
           "instance_label_file": path}
    if classes:
        rec["instance_classes"] = classes
    return rec


def test_one_box_routine_for_targets_evaluation_and_export(tmp_path):
    labels = np.zeros((5, 12, 12), np.int32)
    labels[0:2, 1:4, 2:7] = 3
    labels[2:5, 6:11, 5:9] = 9
    rec = _label_file_record(tmp_path, labels, {3: 1, 9: 0})
    gt, classes = load_record_labels(rec)
    targets = label_volume_to_instances(gt, classes)
    export = label_volume_to_annotations(gt, classes)
    evaluation, _ = gt_coco_annotations(rec)
    expected = [[2, 1, 0, 7, 4, 2], [5, 6, 2, 9, 11, 5]]  # XYZXYZ, [a, b + 1)
    assert targets.gt_boxes.tensor.tolist() == expected
    assert [a["bbox"] for a in export] == expected
    assert [a["bbox"] for a in evaluation] == [b[:3] + [e - s for s, e in zip(b[:3], b[3:])]
                                               for b in expected]
    assert targets.gt_classes.tolist() == [a["category_id"] for a in export] == [1, 0]
    assert [a["category_id"] for a in evaluation] == [1, 0]


def test_label_ids_near_2_31_do_not_allocate_by_the_largest_id(tmp_path):
    labels = np.zeros((4, 16, 16), np.int32)
    labels[1:3, 2:6, 3:9] = 2**31 - 1  # ids written by another tool
    labels[0, 10:12, 10:15] = 5
    rec = _label_file_record(tmp_path, labels, {2**31 - 1: 0})
    mapper = DatasetMapper3D(is_train=True, crop_size=(4, 12, 12))
    tracemalloc.start()
    try:
        gt, classes = load_record_labels(rec)
        inst = label_volume_to_instances(gt, classes)
        annos = label_volume_to_annotations(gt, classes)
        coco, _ = gt_coco_annotations(rec)
        out = mapper(rec)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak < 32, f"{peak:.0f} MB for a 4 KB volume"
    assert inst.gt_boxes.tensor.tolist() == [[10, 10, 0, 15, 12, 1], [3, 2, 1, 9, 6, 3]]
    assert [a["id"] for a in annos] == [5, 2**31 - 1]
    assert [a["instance_id"] for a in coco] == [5, 2**31 - 1]
    assert len(out["instances"]) >= 1
