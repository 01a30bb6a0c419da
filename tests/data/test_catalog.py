import pytest

from det3d.data import DatasetCatalog, MetadataCatalog


def test_dataset_catalog():
    DatasetCatalog.register("_test_cat_a", lambda: [{"file_name": "x"}])
    try:
        assert DatasetCatalog.get("_test_cat_a") == [{"file_name": "x"}]
        assert "_test_cat_a" in DatasetCatalog.list()
        with pytest.raises(KeyError, match="already registered"):
            DatasetCatalog.register("_test_cat_a", lambda: [])
        with pytest.raises(KeyError, match="_test_cat_a"):  # message lists available names
            DatasetCatalog.get("_test_cat_nope")
    finally:
        DatasetCatalog.remove("_test_cat_a")
    assert "_test_cat_a" not in DatasetCatalog.list()
    assert "synthetic_train" in DatasetCatalog.list()  # builtin, registered on import


def test_metadata_set_once():
    m = MetadataCatalog.get("_test_meta")
    m.thing_classes = ["cell"]
    m.thing_classes = ("cell",)  # same value: fine
    with pytest.raises(AssertionError, match="thing_classes"):
        m.thing_classes = ["nucleus"]
    m.set(spacing=(2.0, 0.5, 0.5), evaluator_type="coco3d")
    assert MetadataCatalog.get("_test_meta").spacing == (2.0, 0.5, 0.5)
    with pytest.raises(AttributeError, match="_test_meta"):
        m.nope
    assert m.get("nope", 3) == 3
    MetadataCatalog.remove("_test_meta")
