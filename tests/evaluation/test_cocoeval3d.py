"""COCOeval3D against plain pycocotools (2D) and against a brute-force AP reference (3D)."""

import contextlib
import copy
import io

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from det3d.evaluation.cocoeval3d import COCOeval3D, box_iou_coco, default_area_ranges
from det3d.evaluation.ground_truth import labels_to_coco_annotations
from det3d.structures.rle import encode_rle


# --------------------------------------------------------------------------------------------- #
# 2D: identical to pycocotools
# --------------------------------------------------------------------------------------------- #
def _rle2d(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


def _random_2d_case(seed, n_img=4, n_cat=3, h=60, w=70):
    rng = np.random.default_rng(seed)
    images, gts, dts = [], [], []
    for img in range(1, n_img + 1):
        images.append({"id": img, "height": h, "width": w})
        for _ in range(rng.integers(0, 12)):
            x0, y0 = rng.integers(0, w - 5), rng.integers(0, h - 5)
            bw, bh = rng.integers(1, min(40, w - x0)), rng.integers(1, min(40, h - y0))
            m = np.zeros((h, w), bool)
            m[y0 : y0 + bh, x0 : x0 + bw] = rng.random((bh, bw)) < 0.95
            m[y0, x0] = True
            rle = _rle2d(m)
            cat = int(rng.integers(1, n_cat + 1))
            gts.append(
                {
                    "image_id": img,
                    "category_id": cat,
                    "bbox": mask_util.toBbox(rle).tolist(),
                    "area": float(mask_util.area(rle)),
                    "iscrowd": int(rng.random() < 0.1),
                    "segmentation": rle,
                }
            )
            for _ in range(rng.integers(0, 3)):  # detections near this object
                shift = (rng.integers(-3, 4), rng.integers(-3, 4))
                m2 = np.roll(m, shift, (0, 1)) & (rng.random((h, w)) < 0.97)
                if not m2.any():
                    continue
                r2 = _rle2d(m2)
                dcat = cat if rng.random() < 0.8 else int(rng.integers(1, n_cat + 1))
                # Rounded scores: ties exercise the stable ordering.
                dts.append(
                    {
                        "image_id": img,
                        "category_id": dcat,
                        "bbox": mask_util.toBbox(r2).tolist(),
                        "score": float(np.round(rng.random(), 1)),
                        "segmentation": r2,
                    }
                )
        for _ in range(rng.integers(0, 4)):  # false positives
            m = np.zeros((h, w), bool)
            x0, y0 = rng.integers(0, w - 10), rng.integers(0, h - 10)
            m[y0 : y0 + rng.integers(1, 9), x0 : x0 + rng.integers(1, 10)] = True
            r2 = _rle2d(m)
            dts.append(
                {
                    "image_id": img,
                    "category_id": int(rng.integers(1, n_cat + 1)),
                    "bbox": mask_util.toBbox(r2).tolist(),
                    "score": float(rng.random()),
                    "segmentation": r2,
                }
            )
    return images, gts, dts, list(range(1, n_cat + 1))


def _pycocotools_stats(images, gts, dts, cats, iou_type, max_dets):
    coco = COCO()
    anns = [dict(copy.deepcopy(g), id=i + 1) for i, g in enumerate(gts)]
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in cats]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        res = copy.deepcopy(dts)
        if iou_type == "segm":  # as Detectron2: the mask, not the box, gives a detection's area
            for r in res:
                r.pop("bbox")
        coco_dt = coco.loadRes(res)
        ev = COCOeval(coco, coco_dt, iou_type)
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", range(8))
def test_2d_equals_pycocotools(seed, iou_type):
    images, gts, dts, cats = _random_2d_case(seed)
    max_dets = (1, 10, 100) if seed % 2 else (1, 3, 100)  # small maxDets exercise truncation
    ref = _pycocotools_stats(images, gts, dts, cats, iou_type, max_dets)
    dts = [dict(d, area=float(mask_util.area(d["segmentation"]))) for d in dts]
    ev = COCOeval3D(gts, dts, [i["id"] for i in images], cats, iou_type, ndim=2, max_dets=max_dets)
    ev.evaluate()
    ev.accumulate()
    stats = ev.summarize()
    np.testing.assert_array_equal(stats, ref)
    assert stats[0] > 0 and stats[1] > 0  # a meaningful case, not all-zero


def test_box_iou_bit_identical_to_pycocotools_2d():
    rng = np.random.default_rng(0)
    dt = np.concatenate([rng.random((30, 2)) * 50, rng.random((30, 2)) * 30], 1)
    gt = np.concatenate([rng.random((20, 2)) * 50, rng.random((20, 2)) * 30], 1)
    crowd = (rng.random(20) < 0.3).astype(int)
    ref = np.asarray(mask_util.iou(dt.tolist(), gt.tolist(), crowd.tolist()))
    np.testing.assert_array_equal(box_iou_coco(dt, gt, crowd), ref)


def test_box_iou_3d_brute_force():
    rng = np.random.default_rng(1)
    corner = rng.integers(0, 10, (15, 3))
    size = rng.integers(1, 8, (15, 3))
    boxes = np.concatenate([corner, size], 1).astype(float)
    vox = []
    for c, s in zip(corner, size):
        m = np.zeros((20, 20, 20), bool)
        m[c[2] : c[2] + s[2], c[1] : c[1] + s[1], c[0] : c[0] + s[0]] = True
        vox.append(m)
    crowd = [0] * 14 + [1]
    iou = box_iou_coco(boxes, boxes, crowd)
    for i in range(15):
        for j in range(15):
            inter = (vox[i] & vox[j]).sum()
            union = vox[i].sum() if crowd[j] else (vox[i] | vox[j]).sum()
            assert iou[i, j] == pytest.approx(inter / union)


def test_evaluate_img_matches_pycocotools_loop():
    """The candidate-pair matching returns exactly what COCOeval's triple loop returns."""
    images, gts, dts, cats = _random_2d_case(3, n_img=3)
    dts = [dict(d, area=float(mask_util.area(d["segmentation"]))) for d in dts]
    for g in gts[::4]:
        g["ignore"] = 1
    ev = COCOeval3D(gts, dts, [1, 2, 3], cats, "segm", ndim=2)
    ev.evaluate()
    p = ev.params
    for img in p.imgIds:
        for cat in p.catIds:
            for a in p.areaRng:
                mine = ev.evaluateImg(img, cat, a, p.maxDets[-1])
                ref = COCOeval.evaluateImg(ev, img, cat, a, p.maxDets[-1])
                assert (mine is None) == (ref is None)
                if mine is None:
                    continue
                for k in ("dtIds", "gtIds", "dtScores"):
                    assert list(mine[k]) == list(ref[k])
                for k in ("dtMatches", "gtMatches", "gtIgnore", "dtIgnore"):
                    np.testing.assert_array_equal(mine[k], ref[k])


# --------------------------------------------------------------------------------------------- #
# 3D: against a brute-force AP written from the COCO rules
# --------------------------------------------------------------------------------------------- #
def _random_3d_case(seed, n_img=3, n_cat=2, shape=(10, 24, 28)):
    rng = np.random.default_rng(seed)
    gts, dts, gt_masks, dt_masks = [], [], {}, {}
    for img in range(n_img):
        labels = np.zeros(shape, np.int32)
        classes = {}
        for k in range(1, rng.integers(2, 9)):
            z, y, x = (rng.integers(0, s - 3) for s in shape)
            d, h, w = rng.integers(2, 7), rng.integers(2, 10), rng.integers(2, 10)
            labels[z : z + d, y : y + h, x : x + w] = k
            classes[k] = int(rng.integers(0, n_cat))
        anns = labels_to_coco_annotations(labels, classes)
        for a in anns:
            gts.append(dict(a, image_id=img))
            gt_masks[len(gts) - 1] = labels == a["instance_id"]
            for _ in range(rng.integers(0, 3)):
                m = np.roll(labels == a["instance_id"], rng.integers(-1, 2, 3), (0, 1, 2))
                m &= rng.random(shape) < 0.95
                if not m.any():
                    continue
                zz, yy, xx = np.nonzero(m)
                box = [
                    xx.min(),
                    yy.min(),
                    zz.min(),
                    xx.max() + 1 - xx.min(),
                    yy.max() + 1 - yy.min(),
                    zz.max() + 1 - zz.min(),
                ]
                dcat = a["category_id"] if rng.random() < 0.85 else int(rng.integers(0, n_cat))
                dts.append(
                    {
                        "image_id": img,
                        "category_id": dcat,
                        "bbox": [float(v) for v in box],
                        "score": float(rng.random()),
                        "segmentation": encode_rle(m),
                        "area": float(m.sum()),
                    }
                )
                dt_masks[len(dts) - 1] = m
    return gts, dts, gt_masks, dt_masks, list(range(n_cat)), list(range(n_img))


def _box_iou_ref(a, b):
    k = len(a) // 2
    inter = 1.0
    for i in range(k):
        inter *= max(0.0, min(a[i] + a[k + i], b[i] + b[k + i]) - max(a[i], b[i]))
    va, vb = np.prod(a[k:]), np.prod(b[k:])
    return inter / (va + vb - inter)


def _brute_force_ap(gts, dts, gt_masks, dt_masks, cats, imgs, iou_type, thrs):
    """Mean over (threshold, category with gt) of 101-point interpolated precision."""
    aps = []
    for t in thrs:
        for c in cats:
            n_gt = sum(g["category_id"] == c for g in gts)
            if n_gt == 0:
                continue
            scored = []  # (score, is_tp)
            for img in imgs:
                gi = [
                    i for i, g in enumerate(gts) if g["image_id"] == img and g["category_id"] == c
                ]
                di = [
                    i for i, d in enumerate(dts) if d["image_id"] == img and d["category_id"] == c
                ]
                di.sort(key=lambda i: -dts[i]["score"])
                used = set()
                for i in di:
                    best, m = min(t, 1 - 1e-10), None
                    for j in gi:
                        if j in used:
                            continue
                        if iou_type == "bbox":
                            iou = _box_iou_ref(dts[i]["bbox"], gts[j]["bbox"])
                        else:
                            a, b = dt_masks[i], gt_masks[j]
                            iou = (a & b).sum() / (a | b).sum()
                        if iou >= best:
                            best, m = iou, j
                    if m is not None:
                        used.add(m)
                    scored.append((dts[i]["score"], m is not None))
            scored.sort(key=lambda s: -s[0])
            tp = np.cumsum([s[1] for s in scored])
            fp = np.cumsum([not s[1] for s in scored])
            recall = tp / n_gt if scored else np.zeros(0)
            precision = tp / np.maximum(tp + fp, 1) if scored else np.zeros(0)
            for k in range(len(precision) - 2, -1, -1):
                precision[k] = max(precision[k], precision[k + 1])
            interp = []
            for r in np.linspace(0, 1, 101):
                hit = np.flatnonzero(recall >= r)
                interp.append(precision[hit[0]] if hit.size else 0.0)
            aps.append(np.mean(interp))
    return float(np.mean(aps))


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", range(4))
def test_3d_equals_brute_force(seed, iou_type):
    gts, dts, gt_masks, dt_masks, cats, imgs = _random_3d_case(seed)
    ev = COCOeval3D(gts, dts, imgs, cats, iou_type, ndim=3, max_dets=(1, 10, 1000))
    ev.evaluate()
    ev.accumulate()
    stats = ev.summarize()
    thrs = np.linspace(0.5, 0.95, 10)
    ref = _brute_force_ap(gts, dts, gt_masks, dt_masks, cats, imgs, iou_type, thrs)
    assert stats[0] == pytest.approx(ref, abs=1e-12)
    assert stats[1] == pytest.approx(
        _brute_force_ap(gts, dts, gt_masks, dt_masks, cats, imgs, iou_type, [0.5]), abs=1e-12
    )
    assert stats[2] == pytest.approx(
        _brute_force_ap(gts, dts, gt_masks, dt_masks, cats, imgs, iou_type, [0.75]), abs=1e-12
    )
    assert 0 < stats[0] < 1


def test_3d_area_ranges_are_volumes():
    assert default_area_ranges(3) == (0, 16**3, 32**3, float("inf"))
    assert default_area_ranges(2) == (0, 32**2, 96**2, float("inf"))
    labels = np.zeros((40, 40, 40), np.int32)
    labels[0:10, 0:10, 0:10] = 1  # 1000 voxels: small (< 16^3)
    labels[5:25, 15:35, 15:35] = 2  # 8000 voxels: medium
    gts = [dict(a, image_id=0) for a in labels_to_coco_annotations(labels)]
    dts = [dict(g, score=0.9) for g in gts]
    for iou_type in ("bbox", "segm"):
        ev = COCOeval3D(gts, dts, [0], [0], iou_type, ndim=3)
        ev.evaluate()
        ev.accumulate()
        s = ev.summarize()
        np.testing.assert_allclose(s[[0, 3, 4]], 1.0)
        assert s[5] == -1  # no large object


def test_max_dets_beyond_100():
    """500 objects in one volume: AP uses maxDets[-1], not COCO's fixed 100."""
    labels = np.zeros((5, 100, 100), np.int32)
    labels[:, :, :] = (np.arange(100)[:, None] // 4 * 25 + np.arange(100)[None, :] // 4 + 1)[None]
    gts = [dict(a, image_id=0) for a in labels_to_coco_annotations(labels)]
    assert len(gts) == 625
    dts = [dict(g, score=1.0 - i * 1e-4) for i, g in enumerate(gts)]
    for max_dets, expected in ((100, 100 / 625), (1000, 1.0)):
        ev = COCOeval3D(gts, dts, [0], [0], "segm", ndim=3, max_dets=(1, 10, max_dets))
        ev.evaluate()
        ev.accumulate()
        s = ev.summarize()
        assert s[8] == pytest.approx(expected)  # recall at maxDets[-1]
