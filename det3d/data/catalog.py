"""
Dataset and metadata catalogs: name -> function returning records, name -> metadata.

The same shape as Detectron2's catalogs, so code written for one reads the other:

.. code-block:: python

    DatasetCatalog.register("my_train", lambda: load_label_volume_dataset("img/", "lbl/"))
    MetadataCatalog.get("my_train").set(thing_classes=["nucleus"], spacing=(2.0, 0.5, 0.5))
    records = DatasetCatalog.get("my_train")   # list[dict]: docs/conventions.md "Dataset records"

Where detectron2 is importable, both catalogs keep their entries in Detectron2's
(:func:`det3d.bridge.detectron2.shared_catalog_dicts`): a dataset registered through either
library is listed, read and guarded against a second registration by both.
"""

import logging
import types
from collections import UserDict
from typing import Any, Callable, Dict, List

from det3d.bridge.detectron2 import shared_catalog_dicts

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata"]

logger = logging.getLogger(__name__)


class _DatasetCatalog(UserDict):
    """
    A global dict of dataset name -> function that returns ``list[dict]`` records.

    Functions are called on every :meth:`get`, so registration is cheap and lazy (the builtin
    synthetic splits write their files only when first asked for).
    """

    def register(self, name: str, func: Callable[[], List[dict]]) -> None:
        """
        Args:
            name: a unique dataset name, e.g. "synthetic_train".
            func: a callable with no arguments returning ``list[dict]``.
        """
        if not callable(func):
            raise TypeError(f"DatasetCatalog.register({name!r}, ...): func must be callable")
        if name in self:
            raise KeyError(f"Dataset {name!r} is already registered")
        self[name] = func

    def get(self, name: str) -> List[dict]:
        """
        Calls the function registered under ``name``.

        Raises:
            KeyError: ``name`` is not registered; the message lists the registered names.
        """
        try:
            func = self[name]
        except KeyError as e:
            raise KeyError(
                f"Dataset {name!r} is not registered! Available datasets are: "
                f"{', '.join(sorted(self.keys())) or '(none)'}"
            ) from e
        records = func()
        if not isinstance(records, list):
            raise TypeError(
                f"The function registered for dataset {name!r} must return a list, "
                f"got {type(records).__name__}"
            )
        return records

    def list(self) -> List[str]:
        """Returns the registered names."""
        return list(self.keys())

    def remove(self, name: str) -> None:
        """Removes one registration (KeyError if absent)."""
        self.pop(name)

    def __str__(self) -> str:
        return f"DatasetCatalog(registered datasets: {', '.join(self.keys())})"

    __repr__ = __str__


DatasetCatalog = _DatasetCatalog()
_SHARED_DATASETS, _SHARED_METADATA = shared_catalog_dicts()
if _SHARED_DATASETS is not None:
    DatasetCatalog.data = _SHARED_DATASETS


class Metadata(types.SimpleNamespace):
    """
    Metadata of one dataset, set once and read everywhere:

    * ``thing_classes`` (list[str]): class names; record ``category_id`` indexes this list.
    * ``spacing`` ((z, y, x) floats, micrometres): default voxel spacing of the dataset.
    * ``evaluator_type`` (str): e.g. "coco3d", "ctc".
    * ``thing_dataset_id_to_contiguous_id`` (dict): for COCO-3D json files.
    * ``json_file``, ``image_root``, ``label_dir`` ...: where the data came from.

    An attribute may be set again only to the same value: two parts of a program disagreeing
    about a dataset's classes is a bug to report, not to overwrite.
    """

    name: str = "N/A"

    def __getattr__(self, key: str) -> Any:
        # Only called when normal lookup fails.
        if key.startswith("__"):
            raise AttributeError(key)
        raise AttributeError(
            f"Attribute {key!r} does not exist in the metadata of dataset {self.name!r}. "
            f"Available keys are {sorted(self.__dict__.keys())}."
        )

    def __setattr__(self, key: str, val: Any) -> None:
        if key in self.__dict__:
            old = self.__dict__[key]
            if not _same(old, val):
                raise AssertionError(
                    f"Attribute {key!r} of the metadata of {self.name!r} cannot be set to a "
                    f"different value: {old!r} != {val!r}"
                )
            return
        super().__setattr__(key, val)

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)

    def set(self, **kwargs) -> "Metadata":
        """Sets several attributes at once; returns self."""
        for k, v in kwargs.items():
            setattr(self, k, v)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            return default


def _same(a: Any, b: Any) -> bool:
    # Lists and tuples compare equal by content (yaml gives lists, code gives tuples).
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # arrays and other odd types
        return a is b


class _MetadataCatalog(UserDict):
    """A global dict of dataset name -> :class:`Metadata`, created on first :meth:`get`."""

    def get(self, name: str) -> Metadata:
        assert len(name), "Dataset name is empty"
        r = self.data.get(name)
        if r is None:
            r = self.data[name] = Metadata(name=name)
        return r

    def list(self) -> List[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)

    def __str__(self) -> str:
        return f"MetadataCatalog(registered metadata: {', '.join(self.keys())})"

    __repr__ = __str__


MetadataCatalog = _MetadataCatalog()
if _SHARED_METADATA is not None:
    MetadataCatalog.data = _SHARED_METADATA
