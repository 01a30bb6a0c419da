"""Dataset specs: datasets named by their folders in a config or on the command line."""

import json
import os

import numpy as np
import pytest

from det3d.data import (
    DatasetCatalog,
    MetadataCatalog,
    get_detection_dataset_dicts,
    make_synthetic_dataset,
    write_volume,
)
from det3d.data.datasets.specs import (
    dataset_folder_name,
    is_dataset_spec,
    parse_dataset_spec,
    register_dataset_spec,
    register_dataset_specs,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("specdata"))
    make_synthetic_dataset(
        root, 3, seed=5, shape=(8, 24, 24), num_objects=2, size_range=(2.0, 3.0), spacing=(2, 1, 1)
    )
    return root


def test_parse_and_detect():
    assert is_dataset_spec("folder:images=a,labels=b")
    assert not is_dataset_spec("synthetic_train") and not is_dataset_spec("folder:images")
    fmt, items = parse_dataset_spec("folder:images=a/b,labels=c, spacing=2:0.5:0.5")
    assert fmt == "folder" and items == {"images": "a/b", "labels": "c", "spacing": "2:0.5:0.5"}


@pytest.mark.parametrize(
    "spec, match",
    [
        ("nifti:images=a,labels=b", "unknown format 'nifti'"),
        ("folder:images=a", r"missing key\(s\) \['labels'\]"),
        ("folder:images=a,labels=b,colour=red", r"unknown key\(s\) \['colour'\]"),
        ("folder:images=a,labels", "'labels' is not key=value"),
        ("folder:images=a,images=b,labels=c", "key 'images' given twice"),
    ],
)
def test_malformed_specs_name_the_culprit(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_dataset_spec(spec)


def test_folder_spec_registers_records_classes_and_spacing(folder):
    spec = (
        f"folder:images={folder}/images,labels={folder}/labels,spacing=2:1:1,"
        f"classes=ellipsoid:cuboid:blob,class_map={folder}/classes"
    )
    assert register_dataset_specs(["synthetic_val", spec]) == [spec]
    assert register_dataset_spec(spec) == spec  # registering again is a no-op
    records = DatasetCatalog.get(spec)
    assert [os.path.basename(r["file_name"]) for r in records] == [
        "vol_000.tif",
        "vol_001.tif",
        "vol_002.tif",
    ]
    assert all(r["spacing"] == (2.0, 1.0, 1.0) for r in records)
    # the class of every instance is the one the generator wrote
    want = json.load(open(os.path.join(folder, "classes", "vol_001.json")))
    assert records[1]["instance_classes"] == {int(k): v for k, v in want.items()}
    meta = MetadataCatalog.get(spec)
    assert meta.thing_classes == ["ellipsoid", "cuboid", "blob"] and meta.evaluator_type == "coco3d"

    only = f"folder:images={folder}/images,labels={folder}/labels,pattern=*_001.tif"
    register_dataset_spec(only)
    recs = DatasetCatalog.get(only)
    assert [os.path.basename(r["file_name"]) for r in recs] == ["vol_001.tif"]
    assert MetadataCatalog.get(only).thing_classes == ["object"]


def test_bad_folder_specs_fail_with_the_culprit_named(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="labels=.*nowhere.* is not a folder"):
        register_dataset_spec(f"folder:images={folder}/images,labels={folder}/nowhere")
    spec = f"folder:images={folder}/images,labels={folder}/labels,pattern=*.zarr"
    register_dataset_spec(spec)
    with pytest.raises(FileNotFoundError, match=r"matches pattern='\*.zarr'"):
        DatasetCatalog.get(spec)
    bad_map = tmp_path / "classes.json"
    bad_map.write_text("{1: 'cuboid'")  # not JSON
    spec = f"folder:images={folder}/images,labels={folder}/labels,class_map={bad_map}"
    register_dataset_spec(spec)
    with pytest.raises(ValueError, match="classes.json"):
        DatasetCatalog.get(spec)
    with pytest.raises(ValueError, match="spacing='0:1:1' must be 3 positive numbers"):
        register_dataset_spec(f"folder:images={folder}/images,labels={folder}/labels,spacing=0:1:1")


def test_a_dataset_without_objects_is_refused_by_name(tmp_path):
    for sub in ("images", "labels"):
        os.makedirs(tmp_path / sub)
    write_volume(str(tmp_path / "images" / "a.tif"), np.ones((1, 4, 8, 8), np.float32))
    write_volume(str(tmp_path / "labels" / "a.tif"), np.zeros((4, 8, 8), np.int32))
    spec = f"folder:images={tmp_path}/images,labels={tmp_path}/labels"
    register_dataset_spec(spec)
    with pytest.raises(ValueError, match="has any instance to train on.*labels/a.tif"):
        get_detection_dataset_dicts([spec])


def test_folder_names_are_safe():
    assert dataset_folder_name("synthetic_val") == "synthetic_val"
    a = dataset_folder_name("folder:images=/data/a,labels=/data/b")
    b = dataset_folder_name("folder:images=/data/a,labels=/data/c")
    assert "/" not in a and ":" not in a and a != b
