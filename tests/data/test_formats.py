import json

import numpy as np
import pytest

from det3d.data import (
    DatasetCatalog,
    MetadataCatalog,
    convert_to_coco3d,
    label_volume_to_annotations,
    load_coco3d_json,
    load_ctc_dataset,
    load_label_volume_dataset,
    load_record_labels,
    make_synthetic_volume,
    register_ctc_dataset,
    register_label_volume_dataset,
    write_volume,
)
from det3d.data.detection_utils import annotations_to_label_volume
from det3d.structures import BoxMode


def _make_folders(root, n=2, spacing=(2.0, 0.5, 0.5)):
    classes = []
    for i in range(n):
        im, lab, cls = make_synthetic_volume((8, 24, 24), 3, size_range=(1.5, 2.5), seed=i)
        write_volume(str(root / "images" / f"v{i}.tif"), im, spacing=spacing)
        write_volume(str(root / "labels" / f"v{i}_seg.tif"), lab, spacing=spacing)
        classes.append((lab, cls))
    return classes


def test_label_volume_roundtrip_exact():
    _, lab, cls = make_synthetic_volume(
        (8, 24, 24), 4, size_range=(1.5, 2.5), touching=True, seed=5
    )
    annos = label_volume_to_annotations(lab, cls)
    assert [a["id"] for a in annos] == [1, 2, 3, 4]
    for a in annos:
        assert a["bbox_mode"] == BoxMode.XYZXYZ_ABS and a["iscrowd"] == 0
        assert a["category_id"] == cls[a["id"]]
        zz, yy, xx = np.nonzero(lab == a["id"])
        assert a["bbox"] == [xx.min(), yy.min(), zz.min(), xx.max() + 1, yy.max() + 1, zz.max() + 1]
        assert a["area"] == (lab == a["id"]).sum()
    back, back_cls = annotations_to_label_volume(annos, lab.shape)
    np.testing.assert_array_equal(back, lab)  # ids are 1..N in order, so exact
    assert back_cls == cls


def test_label_volume_dataset(tmp_path):
    truth = _make_folders(tmp_path)
    json.dump({"1": 2, "2": "cuboid"}, open(tmp_path / "cmap.json", "w"))
    recs = load_label_volume_dataset(
        str(tmp_path / "images"),
        str(tmp_path / "labels"),
        label_suffix="_seg",
        class_map=str(tmp_path / "cmap.json"),
        thing_classes=["ellipsoid", "cuboid", "blob"],
    )
    assert len(recs) == 2
    r = recs[1]
    assert (r["depth"], r["height"], r["width"]) == (8, 24, 24)
    assert r["spacing"] == pytest.approx((2.0, 0.5, 0.5))  # from the file metadata
    assert r["instance_classes"] == {1: 2, 2: 1}
    labels, classes = load_record_labels(r)
    np.testing.assert_array_equal(labels, truth[1][0])
    assert classes == {1: 2, 2: 1, 3: 0}

    register_label_volume_dataset(
        "_test_lv",
        str(tmp_path / "images"),
        str(tmp_path / "labels"),
        metadata={"thing_classes": ["cell"]},
        label_suffix="_seg",
    )
    try:
        assert len(DatasetCatalog.get("_test_lv")) == 2
        assert MetadataCatalog.get("_test_lv").thing_classes == ["cell"]
    finally:
        DatasetCatalog.remove("_test_lv")
        MetadataCatalog.remove("_test_lv")


def test_label_volume_dataset_errors(tmp_path):
    _make_folders(tmp_path, n=1)
    with pytest.raises(FileNotFoundError, match="v0.tif"):  # no v0.tif label (suffix missing)
        load_label_volume_dataset(str(tmp_path / "images"), str(tmp_path / "labels"))
    write_volume(str(tmp_path / "labels" / "v0.tif"), np.zeros((8, 24, 23), np.int32))
    with pytest.raises(ValueError, match="Shape mismatch.*v0.tif"):
        load_label_volume_dataset(str(tmp_path / "images"), str(tmp_path / "labels"))


def test_coco3d_roundtrip(tmp_path):
    truth = _make_folders(tmp_path)
    data = convert_to_coco3d(
        image_dir=str(tmp_path / "images"),
        label_dir=str(tmp_path / "labels"),
        label_suffix="_seg",
        thing_classes=["a", "b", "c"],
    )
    assert data["categories"] == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
        {"id": 3, "name": "c"},
    ]
    assert data["images"][0]["file_name"] == "v0.tif" and data["images"][0]["depth"] == 8
    ann = data["annotations"][0]
    assert ann["segmentation"]["size"] == [8, 24, 24] and len(ann["bbox"]) == 6
    path = tmp_path / "coco3d.json"
    path.write_text(json.dumps(data))
    recs = load_coco3d_json(str(path), str(tmp_path / "images"), dataset_name="_test_coco")
    assert MetadataCatalog.get("_test_coco").thing_classes == ["a", "b", "c"]
    MetadataCatalog.remove("_test_coco")
    for rec, (lab, cls) in zip(recs, truth):
        assert rec["spacing"] == pytest.approx((2.0, 0.5, 0.5))
        assert rec["annotations"][0]["bbox_mode"] == BoxMode.XYZWHD_ABS
        # label volume -> COCO-3D -> label volume is exact, classes included
        labels, classes = load_record_labels(rec)
        np.testing.assert_array_equal(labels, lab)
        assert classes == {k: 0 for k in cls}  # no class map given: category 0
        x, y, z, w, h, d = rec["annotations"][0]["bbox"]
        zz, yy, xx = np.nonzero(lab == 1)
        assert (x, y, z, w, h, d) == (
            xx.min(),
            yy.min(),
            zz.min(),
            np.ptp(xx) + 1,
            np.ptp(yy) + 1,
            np.ptp(zz) + 1,
        )
    # records -> COCO-3D again: identical annotations
    again = convert_to_coco3d(
        recs, thing_classes=["a", "b", "c"], image_root=str(tmp_path / "images")
    )
    for k in ("segmentation", "bbox", "category_id", "area", "image_id"):
        assert [a[k] for a in again["annotations"]] == [a[k] for a in data["annotations"]]


def test_coco3d_errors(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_coco3d_json(str(p), str(tmp_path))
    p.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.tif", "depth": 2, "height": 3, "width": 4}],
                "annotations": [
                    {
                        "id": 1,
                        "image_id": 1,
                        "category_id": 1,
                        "bbox": [0] * 6,
                        "segmentation": {"size": [2, 3, 5], "counts": ""},
                    }
                ],
                "categories": [{"id": 1, "name": "cell"}],
            }
        )
    )
    with pytest.raises(ValueError, match="bad.json"):
        load_coco3d_json(str(p), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_coco3d_json(str(tmp_path / "missing.json"), str(tmp_path))


def _ctc(root, digits=3):
    seq, gt = root / "01", root / "01_GT" / "SEG"
    seq.mkdir(parents=True)
    gt.mkdir(parents=True)
    vols = {}
    for t in range(3):
        im, lab, _ = make_synthetic_volume((6, 16, 16), 2, size_range=(1.5, 2.5), seed=t)
        write_volume(str(seq / f"t{t:0{digits}d}.tif"), im, spacing=(2.0, 0.5, 0.5))
        vols[t] = lab
    write_volume(str(gt / f"man_seg{0:0{digits}d}.tif"), vols[0])
    for z in (1, 4):  # time point 2: two annotated slices only
        write_volume(str(gt / f"man_seg_{2:0{digits}d}_{z:0{digits}d}.tif"), vols[2][z])
    return vols


@pytest.mark.parametrize("digits", [3, 4])
def test_ctc(tmp_path, digits):
    vols = _ctc(tmp_path, digits)
    recs = load_ctc_dataset(str(tmp_path), "01")
    assert [r["frame"] for r in recs] == [0, 2]  # time point 1 has no ground truth
    full, sparse = recs
    assert full["spacing"] == pytest.approx((2.0, 0.5, 0.5)) and full["depth"] == 6
    np.testing.assert_array_equal(load_record_labels(full)[0], vols[0])
    assert sparse["seg_slices"] == [1, 4] and "instance_label_file" not in sparse
    lab, _ = load_record_labels(sparse)
    np.testing.assert_array_equal(lab[[1, 4]], vols[2][[1, 4]])
    assert not lab[[0, 2, 3, 5]].any()
    assert len(load_ctc_dataset(str(tmp_path), "01", gt=None)) == 3
    register_ctc_dataset("_test_ctc", str(tmp_path), ["01"], spacing=(1.0, 1.0, 1.0))
    try:
        recs = DatasetCatalog.get("_test_ctc")
        assert recs[0]["spacing"] == (1.0, 1.0, 1.0)
        assert MetadataCatalog.get("_test_ctc").evaluator_type == "ctc"
    finally:
        DatasetCatalog.remove("_test_ctc")
        MetadataCatalog.remove("_test_ctc")


def test_ctc_errors(tmp_path):
    _ctc(tmp_path)
    write_volume(
        str(tmp_path / "01_GT" / "SEG" / "man_seg001.tif"), np.zeros((6, 16, 15), np.int32)
    )
    with pytest.raises(ValueError, match="man_seg001.tif"):
        load_ctc_dataset(str(tmp_path), "01")
    with pytest.raises(FileNotFoundError, match="02"):
        load_ctc_dataset(str(tmp_path), "02")
