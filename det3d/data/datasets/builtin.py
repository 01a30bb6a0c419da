"""
Builtin datasets, registered when ``det3d.data`` is imported.

Two synthetic families (:mod:`det3d.data.synthetic`):

* ``synthetic_*``: 3 classes (ellipsoid, cuboid, blob), anisotropic spacing ``(1.0, 0.5, 0.5)``
  µm (``(2.0, 0.5, 0.5)`` for ``synthetic_aniso_*``), objects apart from each other, moderate
  contrast and Gaussian noise.
* ``toy3d_*``: the toy set of the 3D Mask R-CNN project det3d serves (3 classes: ellipsoid,
  cuboid, pyramid), isotropic 64³ (and 128³) volumes, low contrast, Poisson and Gaussian noise,
  objects 7-43 voxels wide, about one in five touching another.

Synthetic splits are generated on the first ``DatasetCatalog.get`` into
``<root>/<split>/{images,labels,classes}`` with ``<root>`` = :func:`set_synthetic_root`'s
argument (the engine passes ``cfg.SYNTHETIC.ROOT``) when it is not the default
``datasets/synthetic``, else ``$DET3D_DATASETS/synthetic`` when that variable is set, else
``datasets/synthetic`` (relative to the working directory). A split is (re)generated when its ``meta.json`` is missing or records
other generator parameters/version; generation writes into a temporary folder renamed into place,
so concurrent processes never see half-written splits.
"""

import json
import logging
import os
import shutil
import tempfile
from typing import Optional

from ..catalog import DatasetCatalog, MetadataCatalog
from ..synthetic import (
    GENERATOR_VERSION,
    SHAPE_CLASSES,
    make_synthetic_dataset,
    read_synthetic_meta,
)
from .label_volumes import load_label_volume_dataset

__all__ = ["register_all_synthetic", "set_synthetic_root", "get_synthetic_root", "SYNTHETIC_SPLITS"]

logger = logging.getLogger(__name__)

_SPACING = (1.0, 0.5, 0.5)
_ANISO_SPACING = (2.0, 0.5, 0.5)
_COMMON = dict(
    classes=SHAPE_CLASSES,
    size_range=(2.5, 5.0),
    spacing=_SPACING,
    blur_sigma=0.5,
    noise="gaussian",
    noise_level=0.05,
    touching=False,
)
# 128 training volumes (909 objects, 183 MB, written in about 4 s): with 16 the demo model's
# classifier overfit (mask AP50 86-89 on synthetic_val, 90 with 64, 95 with 128; see MODEL_ZOO.md).
SYNTHETIC_SPLITS = {
    "synthetic_train": dict(
        num_volumes=128, seed=1, shape=(32, 96, 96), num_objects=(4, 10), **_COMMON
    ),
    "synthetic_val": dict(
        num_volumes=8, seed=2, shape=(32, 96, 96), num_objects=(4, 10), **_COMMON
    ),
    # Strongly anisotropic, as a confocal stack: z voxels 4x the xy size, the same physical
    # extent and objects as synthetic_train (so objects span 2-6 slices). For comparing 2.5D and
    # 3D models (MODEL_ZOO.md).
    "synthetic_aniso_train": dict(
        num_volumes=128,
        seed=5,
        shape=(16, 96, 96),
        num_objects=(4, 10),
        **dict(_COMMON, spacing=_ANISO_SPACING),
    ),
    "synthetic_aniso_val": dict(
        num_volumes=8,
        seed=6,
        shape=(16, 96, 96),
        num_objects=(4, 10),
        **dict(_COMMON, spacing=_ANISO_SPACING),
    ),
    "synthetic_tiny_train": dict(
        num_volumes=4,
        seed=3,
        shape=(16, 32, 32),
        num_objects=(2, 3),
        **dict(_COMMON, size_range=(1.5, 3.0)),
    ),
    "synthetic_tiny_val": dict(
        num_volumes=2,
        seed=4,
        shape=(16, 32, 32),
        num_objects=(2, 3),
        **dict(_COMMON, size_range=(1.5, 3.0)),
    ),
}

# The toy3d family. Semi-axes 3.5-18 µm at 1 µm voxels, rotated: boxes 7-43 voxels wide, 60% of
# the objects under 2000 voxels; a new object touches an earlier one with probability 0.12, which
# leaves about 18% of the objects touching another. Contrast 0.15-0.4 over a background of 0.2,
# Poisson noise of ~33 photons per unit intensity plus Gaussian read noise of 0.03: a
# signal-to-noise ratio of about 2-4. Generation takes about 1 s per 64³ volume.
TOY3D_CLASSES = ("ellipsoid", "cuboid", "pyramid")
_TOY3D = dict(
    classes=TOY3D_CLASSES,
    size_range=(3.5, 18.0),
    spacing=(1.0, 1.0, 1.0),
    touching=0.12,
    contrast=(0.15, 0.4),
    background=0.2,
    noise="poisson+gaussian",
    noise_level=0.03,
    blur_sigma=1.0,
)
SYNTHETIC_SPLITS.update(
    {
        "toy3d_train": dict(
            num_volumes=50, seed=11, shape=(64, 64, 64), num_objects=(5, 11), **_TOY3D
        ),
        "toy3d_test": dict(
            num_volumes=10, seed=12, shape=(64, 64, 64), num_objects=(5, 11), **_TOY3D
        ),
        # the same objects at the same density in volumes 8x as large
        "toy3d_test128": dict(
            num_volumes=4, seed=13, shape=(128, 128, 128), num_objects=(40, 88), **_TOY3D
        ),
    }
)

_ROOT: Optional[str] = None


def set_synthetic_root(root: Optional[str]) -> None:
    """Where the synthetic splits live (None: ``$DET3D_DATASETS/synthetic`` or ``datasets/synthetic``)."""
    global _ROOT
    _ROOT = root


_DEFAULT_ROOT = os.path.join("datasets", "synthetic")  # = the default of cfg.SYNTHETIC.ROOT


def get_synthetic_root() -> str:
    """A root set to something other than the default wins; then ``$DET3D_DATASETS/synthetic``."""
    if _ROOT and os.path.normpath(_ROOT) != _DEFAULT_ROOT:
        return _ROOT
    env = os.environ.get("DET3D_DATASETS")
    return os.path.join(env, "synthetic") if env else _DEFAULT_ROOT


def _jsonable(params: dict) -> dict:
    return json.loads(json.dumps(params))  # tuples -> lists, as in meta.json


def _expected_meta(params: dict) -> dict:
    p = dict(params)
    return {"generator_version": GENERATOR_VERSION, **_jsonable(p)}


def _is_current(split_dir: str, params: dict) -> bool:
    meta = read_synthetic_meta(split_dir)
    if meta is None:
        return False
    want = _expected_meta(params)
    return meta.get("request") == want


def ensure_synthetic_split(name: str, root: Optional[str] = None) -> str:
    """Generates split ``name`` under ``root`` unless it is there and current; returns its folder."""
    params = SYNTHETIC_SPLITS[name]
    root = root or get_synthetic_root()
    split_dir = os.path.join(root, name)
    if _is_current(split_dir, params):
        return split_dir
    logger.info(f"Generating synthetic split {name!r} in {split_dir}")
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root)
    try:
        kwargs = dict(params)
        meta = make_synthetic_dataset(tmp, **kwargs)
        meta["request"] = _expected_meta(params)
        from det3d.utils.file_io import write_json_atomic

        write_json_atomic(os.path.join(tmp, "meta.json"), meta)
        if os.path.isdir(split_dir):
            if _is_current(split_dir, params):  # another process finished first
                shutil.rmtree(tmp)
                return split_dir
            stale = tempfile.mkdtemp(prefix=f".{name}.stale-", dir=root)
            os.replace(split_dir, os.path.join(stale, "old"))
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, split_dir)
        except OSError:  # another process renamed its copy first
            if not _is_current(split_dir, params):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return split_dir


def _load_synthetic(name: str):
    split_dir = ensure_synthetic_split(name)
    params = SYNTHETIC_SPLITS[name]
    return load_label_volume_dataset(
        os.path.join(split_dir, "images"),
        os.path.join(split_dir, "labels"),
        spacing=params["spacing"],
        class_map=os.path.join(split_dir, "classes"),
        thing_classes=list(params["classes"]),
    )


def register_all_synthetic() -> None:
    for name, params in SYNTHETIC_SPLITS.items():
        if name in DatasetCatalog:
            continue
        DatasetCatalog.register(name, lambda name=name: _load_synthetic(name))
        MetadataCatalog.get(name).set(
            thing_classes=list(params["classes"]),
            spacing=tuple(params["spacing"]),
            evaluator_type="coco3d",
        )
