"""A class map naming a category outside thing_classes fails at registration, naming the instance
id and the class, instead of training a class the model has no output for."""

import json

import numpy as np
import pytest

from det3d.data import DatasetCatalog, register_label_volume_dataset, write_volume
from det3d.data.datasets.label_volumes import load_class_map

CLASSES = ["nucleus", "cell"]


def _folders(tmp_path):
    for sub in ("im", "lab"):
        (tmp_path / sub).mkdir()
    write_volume(str(tmp_path / "im" / "a.tif"), np.zeros((2, 4, 4), np.uint8))
    write_volume(str(tmp_path / "lab" / "a.tif"), np.ones((2, 4, 4), np.uint8))
    return str(tmp_path / "im"), str(tmp_path / "lab")


@pytest.mark.parametrize(
    "cmap, culprit",
    [({"7": 2}, "instance 7: category 2"), ({"3": -1}, "instance 3: category -1"),
     ({"4": "mitochondrion"}, "'mitochondrion' \\(instance 4\\)"), ({"5": 1.5}, "instance 5")],
)
def test_class_outside_thing_classes_fails_at_registration(tmp_path, cmap, culprit):
    image_dir, label_dir = _folders(tmp_path)
    name = "class_map_test"
    with pytest.raises(ValueError, match=culprit):
        register_label_volume_dataset(
            name, image_dir, label_dir, metadata={"thing_classes": CLASSES}, class_map=cmap
        )
    assert name not in DatasetCatalog.list()
    path = tmp_path / "cmap.json"
    path.write_text(json.dumps(cmap))
    with pytest.raises(ValueError, match=f"cmap.json.*{culprit}"):
        register_label_volume_dataset(
            name, image_dir, label_dir, metadata={"thing_classes": CLASSES}, class_map=str(path)
        )


def test_good_class_map_resolves_names_and_indices():
    assert load_class_map({"1": "cell", 2: 0}, CLASSES) == {1: 1, 2: 0}
    with pytest.raises(ValueError, match="not an integer"):
        load_class_map({"x": 0}, CLASSES)
