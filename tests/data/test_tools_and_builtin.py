import json
import os
import subprocess
import sys

import numpy as np

from det3d.data import (
    DatasetCatalog,
    MetadataCatalog,
    load_coco3d_json,
    load_record_labels,
    read_labels,
)
from det3d.data.datasets import builtin

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(script, *args):
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", script), *args],
        check=True,
        capture_output=True,
        text=True,
    )


def test_tools_make_synthetic_then_convert(tmp_path):
    out = tmp_path / "synth"
    _run(
        "make_synthetic.py",
        "--output",
        str(out),
        "--num-volumes",
        "2",
        "--shape",
        "8",
        "24",
        "24",
        "--num-objects",
        "2",
        "--size-range",
        "2",
        "3",
        "--spacing",
        "1",
        "1",
        "1",
    )
    _run(
        "convert_to_coco3d.py",
        "--images",
        str(out / "images"),
        "--labels",
        str(out / "labels"),
        "--output",
        str(tmp_path / "c.json"),
        "--class-map",
        str(out / "classes"),
        "--thing-classes",
        "ellipsoid",
        "cuboid",
        "blob",
        "--spacing",
        "2",
        "0.5",
        "0.5",
    )
    data = json.loads((tmp_path / "c.json").read_text())
    assert len(data["images"]) == 2 and len(data["annotations"]) == 4
    recs = load_coco3d_json(str(tmp_path / "c.json"), str(out / "images"))
    assert recs[0]["spacing"] == (2.0, 0.5, 0.5)
    lab, _ = load_record_labels(recs[1])
    np.testing.assert_array_equal(lab, read_labels(str(out / "labels" / "vol_001.tif")))


def test_builtin_synthetic_lazy(tmp_path):
    builtin.set_synthetic_root(str(tmp_path))
    try:
        assert not (tmp_path / "synthetic_tiny_train").exists()  # nothing written at import
        recs = DatasetCatalog.get("synthetic_tiny_train")
        assert len(recs) == 4 and (tmp_path / "synthetic_tiny_train" / "meta.json").exists()
        assert recs[0]["spacing"] == (1.0, 0.5, 0.5)
        mtime = os.path.getmtime(recs[0]["file_name"])
        assert DatasetCatalog.get("synthetic_tiny_train") == recs  # reused, not regenerated
        assert os.path.getmtime(recs[0]["file_name"]) == mtime
        os.remove(tmp_path / "synthetic_tiny_train" / "meta.json")  # marker gone: regenerate
        again = DatasetCatalog.get("synthetic_tiny_train")
        np.testing.assert_array_equal(
            read_labels(again[0]["instance_label_file"]), load_record_labels(recs[0])[0]
        )
        assert MetadataCatalog.get("synthetic_tiny_train").thing_classes == [
            "ellipsoid",
            "cuboid",
            "blob",
        ]
        assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporaries left
    finally:
        builtin.set_synthetic_root(None)


def test_toy3d_family_is_registered_with_its_own_classes_and_spacing():
    from det3d.data import MetadataCatalog
    from det3d.data.datasets.builtin import SYNTHETIC_SPLITS

    for name in ("toy3d_train", "toy3d_test", "toy3d_test128"):
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["ellipsoid", "cuboid", "pyramid"]
        assert tuple(meta.spacing) == (1.0, 1.0, 1.0)
    assert MetadataCatalog.get("synthetic_val").thing_classes == ["ellipsoid", "cuboid", "blob"]
    assert SYNTHETIC_SPLITS["toy3d_train"]["num_volumes"] == 50
    assert SYNTHETIC_SPLITS["toy3d_test"]["shape"] == (64, 64, 64)
