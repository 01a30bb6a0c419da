"""
Voxel spacing is checked where it enters (registration, file metadata, records in the mapper):
a spacing of 0, below 0, NaN or of the wrong length is an error naming where it came from, never a
volume resampled to one slice.
"""

import numpy as np
import pytest
import tifffile

from det3d.data import (
    DatasetCatalog,
    DatasetMapper3D,
    load_label_volume_dataset,
    read_spacing,
    register_ctc_dataset,
    register_label_volume_dataset,
    write_volume,
)
from det3d.data.io import check_spacing


@pytest.mark.parametrize(
    "bad", [(0.0, 0.5, 0.5), (1.0, -0.5, 0.5), (float("nan"), 1, 1), (1.0, 1.0), "abc", None]
)
def test_check_spacing_names_source_and_value(bad):
    with pytest.raises(ValueError, match="my_source") as e:
        check_spacing(bad, "my_source")
    assert "spacing" in str(e.value)


def test_check_spacing_accepts_positive_triplets():
    assert check_spacing([2, 0.5, 0.25], "x") == (2.0, 0.5, 0.25)


def _folders(tmp_path, spacing_metadata=None):
    (tmp_path / "im").mkdir()
    (tmp_path / "lab").mkdir()
    image = np.zeros((4, 8, 8), np.uint8)
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[1:3, 2:5, 2:5] = 1
    if spacing_metadata is None:
        write_volume(str(tmp_path / "im" / "a.tif"), image, spacing=(1.0, 0.5, 0.5))
    else:  # what another tool may write: det3d's own metadata entry with a bad value
        tifffile.imwrite(
            str(tmp_path / "im" / "a.tif"),
            image,
            photometric="minisblack",
            metadata={"axes": "ZYX", "spacing": list(spacing_metadata)},
        )
    write_volume(str(tmp_path / "lab" / "a.tif"), labels)
    return str(tmp_path / "im"), str(tmp_path / "lab")


def test_zero_spacing_in_file_metadata_names_file(tmp_path):
    image_dir, label_dir = _folders(tmp_path, spacing_metadata=(0.0, 0.5, 0.5))
    with pytest.raises(ValueError, match="a.tif.*spacing .*0.0"):
        read_spacing(f"{image_dir}/a.tif")
    with pytest.raises(ValueError, match="a.tif"):
        load_label_volume_dataset(image_dir, label_dir)


@pytest.mark.parametrize("bad", [(0.0, 0.5, 0.5), (-1.0, 0.5, 0.5), (0.5, 0.5)])
def test_bad_spacing_refused_at_registration(tmp_path, bad):
    image_dir, label_dir = _folders(tmp_path)
    name = "spacing_test_dataset"
    with pytest.raises(ValueError, match=f"{name}.*spacing"):
        register_label_volume_dataset(name, image_dir, label_dir, spacing=bad)
    assert name not in DatasetCatalog.list()  # nothing half-registered
    with pytest.raises(ValueError, match="spacing_test_ctc.*spacing"):
        register_ctc_dataset("spacing_test_ctc", str(tmp_path), spacing=bad)
    assert "spacing_test_ctc" not in DatasetCatalog.list()


def test_mapper_refuses_bad_record_spacing(tmp_path):
    image_dir, label_dir = _folders(tmp_path)
    (record,) = load_label_volume_dataset(image_dir, label_dir)
    mapper = DatasetMapper3D(is_train=True, target_spacing=(1.0, 0.5, 0.5))
    assert mapper(record)["image"].shape == (1, 4, 8, 8)  # a good spacing passes
    record["spacing"] = (0.0, 0.5, 0.5)  # a record made by hand
    with pytest.raises(ValueError, match="a.tif.*spacing"):
        mapper(record)


@pytest.mark.parametrize("bad", [(0.0, 0.5, 0.5), (1.0, 1.0)])
def test_mapper_refuses_bad_target_spacing(bad):
    with pytest.raises(ValueError, match="INPUT.TARGET_SPACING"):
        DatasetMapper3D(is_train=False, target_spacing=bad)
