"""The dataset fingerprint (det3d.planning.fingerprint) on volumes whose objects are known."""

import os

import numpy as np
import pytest

from det3d.data import write_volume
from det3d.data.datasets import load_label_volume_dataset
from det3d.evaluation import touching_objects
from det3d.planning import dataset_fingerprint


def _boxes_volume(shape, boxes):
    """Labels with axis-aligned boxes (z0, y0, x0, z1, y1, x1), id = position + 1."""
    labels = np.zeros(shape, np.int32)
    for i, (z0, y0, x0, z1, y1, x1) in enumerate(boxes):
        labels[z0:z1, y0:y1, x0:x1] = i + 1
    return labels


@pytest.fixture
def dataset(tmp_path):
    # volume a: three boxes, 1 and 2 share a face; volume b: one box, labelled with a large id
    a = _boxes_volume(
        (10, 20, 20), [(0, 0, 0, 2, 4, 6), (2, 0, 0, 4, 4, 6), (6, 10, 10, 10, 20, 14)]
    )
    b = np.zeros((10, 20, 20), np.int32)
    b[1:4, 2:12, 3:5] = 2_000_000_000  # an id near 2^31 must not allocate by its value
    for sub in ("images", "labels"):
        os.makedirs(tmp_path / sub)
    for name, lab in (("a", a), ("b", b)):
        image = np.where(lab > 0, 3.0, 1.0).astype(np.float32)[None]
        image += np.random.default_rng(0).normal(0, 0.5, image.shape).astype(np.float32)
        write_volume(str(tmp_path / "images" / f"{name}.tif"), image, spacing=(2.0, 0.5, 0.5))
        write_volume(str(tmp_path / "labels" / f"{name}.tif"), lab, spacing=(2.0, 0.5, 0.5))
    return load_label_volume_dataset(str(tmp_path / "images"), str(tmp_path / "labels"))


def test_touching_objects():
    lab = _boxes_volume((4, 4, 8), [(0, 0, 0, 4, 4, 2), (0, 0, 2, 4, 4, 4), (0, 0, 5, 4, 4, 8)])
    np.testing.assert_array_equal(touching_objects(lab), [1, 2])


def test_fingerprint_of_known_objects(dataset):
    fp = dataset_fingerprint(dataset)
    assert fp["num_volumes"] == 2
    assert fp["spacing"]["median"] == [2.0, 0.5, 0.5] and fp["spacing"]["anisotropy"] == 4.0
    assert fp["shape"]["min"] == [10, 20, 20]
    obj = fp["objects"]
    assert obj["count"] == 4
    # extents (D, H, W) of the four boxes: (2,4,6), (2,4,6), (4,10,4), (3,10,2)
    sizes = sorted(map(tuple, obj["sizes_voxels_sample"]))
    assert sizes == sorted([(2, 4, 6), (2, 4, 6), (4, 10, 4), (3, 10, 2)])
    assert obj["size_voxels"][0]["p0"] == 2 and obj["size_voxels"][0]["p100"] == 4
    assert obj["size_um"][1]["p100"] == 5.0  # 10 voxels of 0.5 µm
    assert obj["volume_voxels"]["p0"] == 48 and obj["volume_voxels"]["p100"] == 160
    assert obj["per_volume"]["p0"] == 1 and obj["per_volume"]["p100"] == 3
    assert obj["touching_fraction"] == 0.5  # objects 1 and 2 of volume a
    assert fp["classes"] == {"0": 4}
    stats = fp["intensity"]["0"]
    assert stats["foreground"]["p50"] == pytest.approx(3.0, abs=0.1)
    assert stats["background"]["p50"] == pytest.approx(1.0, abs=0.1)
    assert stats["contrast_to_noise"] == pytest.approx(4.0, rel=0.15)


def test_fingerprint_refuses_a_dataset_without_objects(tmp_path):
    for sub in ("images", "labels"):
        os.makedirs(tmp_path / sub)
    write_volume(str(tmp_path / "images" / "e.tif"), np.ones((1, 4, 8, 8), np.float32))
    write_volume(str(tmp_path / "labels" / "e.tif"), np.zeros((4, 8, 8), np.int32))
    records = load_label_volume_dataset(str(tmp_path / "images"), str(tmp_path / "labels"))
    with pytest.raises(ValueError, match="no object in any volume.*labels/e.tif"):
        dataset_fingerprint(records)
    with pytest.raises(ValueError, match="no records"):
        dataset_fingerprint([])
