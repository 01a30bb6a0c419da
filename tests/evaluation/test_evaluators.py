"""Evaluators end to end: catalog ground truth, the reset/process/evaluate protocol, files written."""

import contextlib
import copy
import io
import json
import math
import os
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from det3d.data import DatasetCatalog, MetadataCatalog
from det3d.data.io import write_volume
from det3d.evaluation import (
    COCO3DEvaluator,
    COCOeval3D,
    DatasetEvaluator,
    DatasetEvaluators,
    InstanceMatchingEvaluator,
    SEGEvaluator,
    inference_on_dataset,
    matching_metrics,
    print_csv_format,
    seg_jaccard,
    verify_results,
)
from det3d.evaluation.ground_truth import labels_to_coco_annotations
from det3d.structures import Boxes, BoxMode, Instances
from det3d.structures.rle import encode_rle


def _blobs(rng, shape, n):
    labels = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        z, y, x = (rng.integers(0, s - 3) for s in shape)
        labels[
            z : z + rng.integers(2, 5), y : y + rng.integers(3, 9), x : x + rng.integers(3, 9)
        ] = k
    # Ids that were fully overwritten disappear; keep ids consecutive for readability.
    ids = np.unique(labels)
    return np.searchsorted(ids, labels).astype(np.int32)


def _register(records, classes=("cell", "nucleus")):
    name = f"_test_eval_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: copy.deepcopy(records))
    MetadataCatalog.get(name).set(thing_classes=list(classes))
    return name


@pytest.fixture
def label_dataset(tmp_path):
    rng = np.random.default_rng(0)
    records, volumes = [], []
    for i in range(3):
        labels = _blobs(rng, (8, 30, 32), 10)
        path = str(tmp_path / f"labels_{i}.tif")
        write_volume(path, labels)
        classes = {int(k): int(k % 2) for k in np.unique(labels) if k}
        records.append(
            {
                "file_name": f"img_{i}.tif",
                "image_id": i,
                "depth": 8,
                "height": 30,
                "width": 32,
                "spacing": (1.0, 1.0, 1.0),
                "instance_label_file": path,
                "instance_classes": classes,
            }
        )
        volumes.append((labels, classes))
    name = _register(records)
    yield name, records, volumes
    DatasetCatalog.remove(name)


def _prediction(labels, classes, rng=None):
    """An output dict built from a label volume (perturbed when rng is given)."""
    pred = labels.copy()
    if rng is not None:
        pred = np.roll(pred, (0, 0, 1), (0, 1, 2))
        pred[rng.random(pred.shape) < 0.05] = 0
        pred[pred == 3] = 0  # a missed object
    ids = [int(i) for i in np.unique(pred) if i]
    scores = np.linspace(0.9, 0.3, len(ids)) if rng is None else rng.random(len(ids))
    order = np.argsort(-scores, kind="stable")
    ids = [ids[k] for k in order]
    boxes, inst_labels = [], np.zeros_like(pred)
    for row, i in enumerate(ids):
        zz, yy, xx = np.nonzero(pred == i)
        boxes.append([xx.min(), yy.min(), zz.min(), xx.max() + 1, yy.max() + 1, zz.max() + 1])
        inst_labels[pred == i] = row + 1
    inst = Instances(
        tuple(labels.shape),
        pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 6)),
        scores=torch.tensor(scores[order], dtype=torch.float32),
        pred_classes=torch.tensor([classes.get(i, 0) for i in ids], dtype=torch.int64),
    )
    return {"instances": inst, "instance_labels": torch.from_numpy(inst_labels)}


class _FakeModel(torch.nn.Module):
    def __init__(self, volumes, perturb):
        super().__init__()
        self.volumes = volumes
        self.perturb = perturb
        self.layer = torch.nn.Linear(1, 1)
        self.seen_grad = []
        self.seen_training = []

    def forward(self, inputs):
        self.seen_grad.append(torch.is_grad_enabled())
        self.seen_training.append(self.training)
        rng = np.random.default_rng(123) if self.perturb else None
        return [_prediction(*self.volumes[x["image_id"]], rng) for x in inputs]


def _inputs(records):
    keys = ("image_id", "file_name", "depth", "height", "width")
    return [[{k: r[k] for k in keys}] for r in records]


def test_perfect_predictions(label_dataset, tmp_path):
    name, records, volumes = label_dataset
    model = _FakeModel(volumes, perturb=False)
    model.train()
    evaluator = DatasetEvaluators(
        [
            COCO3DEvaluator(name, output_dir=str(tmp_path / "out")),
            InstanceMatchingEvaluator(name, output_dir=str(tmp_path / "out")),
            SEGEvaluator(name, output_dir=str(tmp_path / "out")),
        ]
    )
    res = inference_on_dataset(model, _inputs(records), evaluator)
    assert model.training and not any(model.seen_training) and not any(model.seen_grad)
    for task in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75", "AP-cell", "AP-nucleus"):
            assert res[task][k] == pytest.approx(100.0), (task, k)
        assert set(res[task]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert res["matching"]["f1@0.5"] == 1.0 and res["matching"]["panoptic_quality@0.9"] == 1.0
    assert res["seg"]["SEG"] == 1.0
    out = tmp_path / "out"
    for f in (
        "coco3d_results.json",
        "coco3d_instances_results.json",
        "matching_results.json",
        "seg_results.json",
    ):
        with open(out / f) as fh:
            json.load(fh)
    preds = torch.load(out / "instances_predictions.pth", weights_only=False)
    assert [p["image_id"] for p in preds] == [0, 1, 2]
    print_csv_format(res)


def test_perturbed_predictions_match_direct_computation(label_dataset):
    name, records, volumes = label_dataset
    model = _FakeModel(volumes, perturb=True)
    coco = COCO3DEvaluator(name, max_dets=500)
    matching = InstanceMatchingEvaluator(name, thresholds=(0.3, 0.5, 0.7))
    seg = SEGEvaluator(name)
    res = inference_on_dataset(model, _inputs(records), [coco, matching, seg])

    # COCO: the same numbers as COCOeval3D on the ground truth and the raw predictions.
    gts, dts, sums, jac = [], [], {}, []
    for i, (labels, classes) in enumerate(volumes):
        gts += [dict(a, image_id=i) for a in labels_to_coco_annotations(labels, classes)]
        out = model([{"image_id": i}])[0]
        inst, lab = out["instances"], out["instance_labels"].numpy()
        for row in range(len(inst)):
            b = inst.pred_boxes.tensor[row].tolist()
            m = lab == row + 1
            dts.append(
                {
                    "image_id": i,
                    "category_id": int(inst.pred_classes[row]),
                    "bbox": b[:3] + [b[3] - b[0], b[4] - b[1], b[5] - b[2]],
                    "score": float(inst.scores[row]),
                    "segmentation": encode_rle(m),
                    "area": float(m.sum()),
                }
            )
        for t, v in matching_metrics(labels, lab, (0.3, 0.5, 0.7)).items():
            s = sums.setdefault(t, {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})
            s["tp"] += v["tp"]
            s["fp"] += v["fp"]
            s["fn"] += v["fn"]
            s["iou"] += v["sum_matched_iou"]
        jac.append(seg_jaccard(labels, lab).jaccard)
    for task in ("bbox", "segm"):
        ev = COCOeval3D(gts, dts, [0, 1, 2], [0, 1], task, ndim=3, max_dets=(1, 10, 500))
        ev.evaluate()
        ev.accumulate()
        stats = ev.summarize()
        for k, v in zip(("AP", "AP50", "AP75"), stats[:3]):
            assert res[task][k] == pytest.approx(v * 100)
        assert 0 < res[task]["AP"] < 100
    for t, s in sums.items():
        assert res["matching"][f"precision@{t:g}"] == pytest.approx(s["tp"] / (s["tp"] + s["fp"]))
        assert res["matching"][f"recall@{t:g}"] == pytest.approx(s["tp"] / (s["tp"] + s["fn"]))
        pq = s["iou"] / (s["tp"] + s["fp"] / 2 + s["fn"] / 2)
        assert res["matching"][f"panoptic_quality@{t:g}"] == pytest.approx(pq)
    assert res["seg"]["SEG"] == pytest.approx(np.concatenate(jac).mean())

    # The protocol: reset clears the previous round.
    coco.reset()
    coco.process(*[[x] for x in ({"image_id": 0}, model([{"image_id": 0}])[0])])
    one = coco.evaluate()
    assert one["segm"]["AP"] != res["segm"]["AP"]


def test_2d_annotation_records_equal_pycocotools(tmp_path):
    """2D records with annotations (XYWH boxes, RLE masks, crowd): the evaluator's numbers are
    pycocotools' on the same data (bbox and segm, 0-100 scale)."""
    rng = np.random.default_rng(5)
    h, w = 40, 50
    records, images, coco_gts, outputs = [], [], [], {}
    for img in range(3):
        labels = _blobs(rng, (6, h, w), 8).max(axis=0)  # 2D label image
        anns = []
        for a in labels_to_coco_annotations(labels):
            m = labels == a["instance_id"]
            crowd = int(rng.random() < 0.15)
            anns.append(
                {
                    "bbox": a["bbox"],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": 0,
                    "segmentation": encode_rle(m),
                    "iscrowd": crowd,
                }
            )
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            coco_gts.append(
                {
                    "id": len(coco_gts) + 1,
                    "image_id": img,
                    "category_id": 1,
                    "bbox": a["bbox"],
                    "area": float(m.sum()),
                    "iscrowd": crowd,
                    "segmentation": rle,
                }
            )
        records.append(
            {
                "file_name": f"{img}.tif",
                "image_id": img,
                "height": h,
                "width": w,
                "annotations": anns,
            }
        )
        images.append({"id": img, "height": h, "width": w})
        pred = np.roll(labels, (1, 0), (0, 1))
        pred[rng.random(pred.shape) < 0.1] = 0
        ids = [int(i) for i in np.unique(pred) if i]
        scores = rng.random(len(ids))
        boxes, inst_labels = [], np.zeros_like(pred)
        for row, i in enumerate(ids):
            yy, xx = np.nonzero(pred == i)
            boxes.append([xx.min(), yy.min(), xx.max() + 1, yy.max() + 1])
            inst_labels[pred == i] = row + 1
        # Non-sorted scores: the label volume is what it is, the evaluator must not care.
        inst = Instances(
            (h, w),
            pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)),
            scores=torch.tensor(scores, dtype=torch.float64),
            pred_classes=torch.zeros(len(ids), dtype=torch.int64),
        )
        outputs[img] = {"instances": inst, "instance_labels": torch.from_numpy(inst_labels)}
    name = _register(records, classes=("cell",))
    try:
        evaluator = COCO3DEvaluator(name, max_dets=100, output_dir=str(tmp_path))
        evaluator.reset()
        for img in range(3):
            evaluator.process([{"image_id": img}], [outputs[img]])
        res = evaluator.evaluate()
    finally:
        DatasetCatalog.remove(name)

    coco = COCO()
    coco.dataset = {"images": images, "annotations": coco_gts, "categories": [{"id": 1}]}
    dets = []
    for img, out in outputs.items():
        inst, lab = out["instances"], out["instance_labels"].numpy()
        for row in range(len(inst)):
            x0, y0, x1, y1 = inst.pred_boxes.tensor[row].tolist()
            rle = mask_util.encode(np.asfortranarray((lab == row + 1).astype(np.uint8)))
            dets.append(
                {
                    "image_id": img,
                    "category_id": 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(inst.scores[row]),
                    "segmentation": rle,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        for task in ("bbox", "segm"):
            d = copy.deepcopy(dets)
            if task == "segm":
                for x in d:
                    x.pop("bbox")
            ev = COCOeval(coco, coco.loadRes(d), task)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            for k, v in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), ev.stats[:6]):
                expected = v * 100 if v >= 0 else float("nan")
                np.testing.assert_equal(res[task][k], expected)
            assert res[task]["AP-cell"] == pytest.approx(res[task]["AP"])
            assert res[task]["AP"] > 0


def test_pasted_masks_fallback(label_dataset):
    """Without instance_labels, masks are pasted from pred_masks: box-filling masks of the
    ground-truth boxes give bbox AP = segm AP for box-shaped objects."""
    pytest.importorskip("det3d.modeling.postprocessing")
    shape = (6, 20, 20)
    labels = np.zeros(shape, np.int32)
    labels[0:3, 0:5, 0:6] = 1
    labels[2:6, 8:16, 10:19] = 2
    labels[4:6, 0:4, 0:4] = 3
    path = os.path.join(os.path.dirname(label_dataset[1][0]["instance_label_file"]), "boxes.tif")
    write_volume(path, labels)
    rec = {
        "file_name": "x",
        "image_id": 7,
        "depth": 6,
        "height": 20,
        "width": 20,
        "instance_label_file": path,
    }
    name = _register([rec], classes=("cell",))
    try:
        boxes = torch.tensor(
            [[0, 0, 0, 6, 5, 3], [10, 8, 2, 19, 16, 6], [0, 0, 4, 4, 4, 6]], dtype=torch.float32
        )
        inst = Instances(
            shape,
            pred_boxes=Boxes(boxes),
            scores=torch.tensor([0.9, 0.8, 0.7]),
            pred_classes=torch.zeros(3, dtype=torch.int64),
            pred_masks=torch.ones(3, 4, 7, 7),
        )
        evaluator = COCO3DEvaluator(name)
        evaluator.reset()
        evaluator.process([{"image_id": 7}], [{"instances": inst}])
        res = evaluator.evaluate()
    finally:
        DatasetCatalog.remove(name)
    assert res["segm"]["AP"] == pytest.approx(100.0)
    assert res["bbox"]["AP"] == pytest.approx(100.0)


def test_ctc_slice_ground_truth(tmp_path):
    shape = (5, 12, 12)
    gt = np.zeros(shape, np.int32)
    gt[1:4, 2:8, 2:8] = 4
    files = []
    for z in (1, 3):
        p = str(tmp_path / f"man_seg_000_{z:03d}.tif")
        write_volume(p, gt[z][None])
        files.append(p)
    rec = {
        "file_name": "t000.tif",
        "image_id": 0,
        "depth": 5,
        "height": 12,
        "width": 12,
        "seg_slices": [1, 3],
        "seg_slice_files": files,
    }
    name = _register([rec], classes=("cell",))
    pred = np.zeros(shape, np.int32)
    pred[1, 2:8, 2:8] = 1  # exact on slice 1
    pred[3, 2:8, 2:5] = 1  # half of slice 3: no SEG match
    pred[2, :, :] = 1  # wrong on slice 2, which carries no ground truth: not counted
    out = {"instance_labels": torch.from_numpy(pred)}
    try:
        seg, matching = SEGEvaluator(name), InstanceMatchingEvaluator(name, thresholds=(0.4,))
        res = inference_on_dataset(lambda x: [out], [[{"image_id": 0}]], [seg, matching])
    finally:
        DatasetCatalog.remove(name)
    assert res["seg"]["SEG"] == 0.5
    assert res["matching"]["recall@0.4"] == 1.0  # IoU 1 and 0.5 on the two slices


def test_protocol_details():
    class Const(DatasetEvaluator):
        def __init__(self, task):
            self.task, self.n = task, 0

        def reset(self):
            self.n = 0

        def process(self, inputs, outputs):
            self.n += len(inputs)

        def evaluate(self):
            return {self.task: {"n": self.n}}

    res = inference_on_dataset(lambda x: [{}] * len(x), [[1, 2], [3]], [Const("a"), Const("b")])
    assert res == {"a": {"n": 3}, "b": {"n": 3}}
    assert inference_on_dataset(lambda x: x, [[1]], None) == {}
    with pytest.raises(KeyError, match="task"):
        DatasetEvaluators([Const("a"), Const("a")]).evaluate()

    class Cfg:
        class TEST:
            EXPECTED_RESULTS = [["segm", "AP", 50.0, 1.0]]

    assert verify_results(Cfg, {"segm": {"AP": 50.5}})
    with pytest.raises(SystemExit):
        verify_results(Cfg, {"segm": {"AP": 40.0}})


def test_unknown_image_and_bad_task(label_dataset):
    name, _, volumes = label_dataset
    with pytest.raises(ValueError, match="task"):
        COCO3DEvaluator(name, tasks=("keypoints",))
    ev = SEGEvaluator(name)
    ev.reset()
    with pytest.raises(KeyError, match="image_id"):
        ev.process([{"image_id": 99}], [_prediction(*volumes[0])])


def test_matching_reports_where_objects_are_lost(tmp_path):
    # gt: objects 1 and 2 share a face (touching), object 3 (5832 voxels: medium) is alone.
    # The prediction finds 3 exactly, finds 1 with IoU 0.4 only, and misses 2.
    gt = np.zeros((20, 40, 40), np.int32)
    gt[0:4, 0:4, 0:4] = 1  # 64 voxels, small
    gt[0:4, 0:4, 4:8] = 2  # touches 1
    gt[2:20, 20:38, 20:38] = 3  # 18^3 = 5832 voxels, medium
    pred = np.zeros_like(gt)
    pred[0:4, 0:4, 0:1] = 7  # 16 voxels inside object 1: IoU 16 / 64 = 0.25
    pred[2:20, 20:38, 20:38] = 9
    path = str(tmp_path / "gt.tif")
    write_volume(path, gt)
    rec = {
        "file_name": "x.tif",
        "image_id": 0,
        "depth": 20,
        "height": 40,
        "width": 40,
        "spacing": (1.0, 1.0, 1.0),
        "instance_label_file": path,
    }
    name = _register([rec])
    ev = InstanceMatchingEvaluator(name, thresholds=(0.5,), output_dir=str(tmp_path / "o"))
    ev.reset()
    ev.process([{"image_id": 0}], [{"instance_labels": torch.from_numpy(pred)}])
    res = ev.evaluate()["matching"]
    assert res["recall@0.5"] == pytest.approx(1 / 3)
    assert res["recall@0.5_touching"] == 0.0 and res["recall@0.5_isolated"] == 1.0
    assert res["mean_best_iou_touching"] == pytest.approx((0.25 + 0.0) / 2)
    assert res["recall@0.5_small"] == 0.0 and res["recall@0.5_medium"] == 1.0
    assert math.isnan(res["recall@0.5_large"])
    saved = json.load(open(tmp_path / "o" / "matching_results.json"))
    assert saved["groups"]["touching"]["n"] == 2 and saved["groups"]["medium"]["n"] == 1
