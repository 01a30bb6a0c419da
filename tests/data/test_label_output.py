import os

import numpy as np
import pytest
import tifffile

from det3d.data import read_labels, read_spacing
from det3d.data.label_output import (
    ObjectTable,
    create_label_store,
    finalize_labels,
    replace_path,
)
from det3d.engine.tiling import ObjectRecord

SPACING = (2.0, 0.5, 0.25)


def _store(tmp_path, labels, ome=False):
    path = str(tmp_path / "work.zarr")
    store = create_label_store(path, labels.shape, ome=ome)
    store[:] = labels
    return path


@pytest.mark.parametrize("max_label,dtype", [(200, np.uint8), (60000, np.uint16), (70000, np.int32)])
def test_tiff_output_keeps_labels_spacing_and_the_smallest_dtype(tmp_path, max_label, dtype):
    labels = np.zeros((40, 12, 10), np.int32)  # deeper than one chunk row of slices
    labels[3, 2:5, 1:4] = max_label
    labels[35, 7, 7] = 1
    final = str(tmp_path / "v_labels.tif")
    finalize_labels(_store(tmp_path, labels), final, "tiff", SPACING, max_label)
    assert np.array_equal(read_labels(final), labels)
    assert read_spacing(final) == pytest.approx(SPACING)
    assert tifffile.TiffFile(final).pages[0].dtype == dtype


@pytest.mark.parametrize("fmt", ["zarr", "ome-zarr"])
def test_zarr_outputs_are_moved_into_place_with_spacing(tmp_path, fmt):
    labels = np.random.default_rng(0).integers(0, 5, (6, 7, 8)).astype(np.int32)
    store = _store(tmp_path, labels, ome=fmt == "ome-zarr")
    final = str(tmp_path / "v_labels.zarr")
    os.makedirs(os.path.join(final, "stale"))  # an earlier output is replaced whole
    finalize_labels(store, final, fmt, SPACING, 4)
    assert not os.path.exists(store) and not os.path.exists(os.path.join(final, "stale"))
    assert np.array_equal(read_labels(final), labels)
    assert read_spacing(final) == pytest.approx(SPACING)


def test_replace_path_swaps_folders(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a").write_text("new")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "b").write_text("old")
    replace_path(str(tmp_path / "new"), str(tmp_path / "old"))
    assert os.listdir(tmp_path / "old") == ["a"] and not (tmp_path / "new").exists()


def test_object_table_rows_and_truncation(tmp_path):
    table = ObjectTable(str(tmp_path / "t.csv"), ["nucleus"], SPACING)
    size = table.start()
    rec = ObjectRecord(7, 0, 0.875, (1, 2, 3, 4, 6, 8), (2.0, 3.5, 5.0), 12)
    after = table.append([rec])
    table.append([ObjectRecord(8, 3, 0.5, (0, 0, 0, 1, 1, 1), (0.0, 0.0, 0.0), 1)])
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].split(",") == ObjectTable.COLUMNS
    assert lines[1].split(",") == [
        "7", "0", "nucleus", "0.875", "1", "2", "3", "4", "6", "8",
        "2.0000", "3.5000", "5.0000", "4.0000", "1.7500", "1.2500", "12", "3",
    ]
    assert lines[2].split(",")[2] == "class_3"
    table.truncate(after)
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 2
    table.truncate(size)
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 1
