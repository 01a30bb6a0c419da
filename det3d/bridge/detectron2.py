"""
Everything det3d shares with Detectron2, decided in one place. This is the only module of det3d
that imports detectron2.

When detectron2 is importable (:data:`HAS_DETECTRON2`), det3d is a Detectron2 plugin:

* **Registries.** The eight registries both libraries have are Detectron2's own objects
  (:func:`shared_registries`, used by :mod:`det3d.modeling.registries`), so
  ``detectron2.modeling.build_model`` builds det3d models. det3d's names never clash with
  Detectron2's (``GeneralizedRCNN3D``, not ``GeneralizedRCNN``).
* **Config.** det3d's ``CfgNode`` subclasses Detectron2's (:data:`CfgNodeBase`), so
  ``det3d.config.get_cfg()`` is a Detectron2 ``CfgNode`` that ``default_setup`` and every
  Detectron2 helper take; ``add_det3d_config`` makes Detectron2's ``get_cfg()`` a det3d config.
* **Catalogs.** det3d's ``DatasetCatalog`` and ``MetadataCatalog`` keep their entries in
  Detectron2's (:func:`shared_catalog_dicts`): a dataset registered through either library is
  in both, and a name cannot be registered twice.
* **Events.** det3d and Detectron2 share one stack of open ``EventStorage`` objects
  (:func:`event_storage_stack`): the statistics det3d's model parts record (``rpn/num_pos_anchors``,
  ``fast_rcnn/cls_accuracy``, ``mask_rcnn/dice``, ...) reach the storage of whichever trainer runs,
  and so Detectron2's ``metrics.json``.
* **Solver.** Detectron2's ``build_optimizer`` knows only SGD; :func:`install` makes it honour
  det3d's ``SOLVER.OPTIMIZER`` (``ADAMW``, ``ADAM``), so Detectron2's ``DefaultTrainer`` trains a
  det3d config with the optimizer the config names. ``SGD`` (and every config without det3d's
  keys) still gets Detectron2's own optimizer. This is the one change det3d makes to Detectron2's
  behaviour, and it only concerns configs that Detectron2 alone would silently mistrain.

Without detectron2 each of these is det3d's own object and det3d works alone, unchanged.
``import det3d`` calls :func:`install` after registering every part.
"""

import logging
from typing import Dict, List, Optional, Tuple

from fvcore.common.config import CfgNode as _FvCfgNode
from fvcore.common.registry import Registry

__all__ = [
    "HAS_DETECTRON2",
    "CfgNodeBase",
    "shared_registries",
    "shared_catalog_dicts",
    "event_storage_stack",
    "install",
]

try:  # pragma: no cover - detectron2 is not installable on det3d's CI machines
    import detectron2  # noqa: F401

    _D2_INSTALLED = True
except ImportError:
    _D2_INSTALLED = False

try:  # pragma: no cover
    import detectron2.utils.events as _d2_events
    import detectron2.solver.build as _d2_solver_build
    from detectron2.config import CfgNode as _D2CfgNode
    from detectron2.data import DatasetCatalog as _D2DatasetCatalog
    from detectron2.data import MetadataCatalog as _D2MetadataCatalog
    from detectron2.modeling import (
        ANCHOR_GENERATOR_REGISTRY,
        BACKBONE_REGISTRY,
        META_ARCH_REGISTRY,
        PROPOSAL_GENERATOR_REGISTRY,
        ROI_HEADS_REGISTRY,
    )
    from detectron2.modeling.proposal_generator.rpn import RPN_HEAD_REGISTRY
    from detectron2.modeling.roi_heads.box_head import ROI_BOX_HEAD_REGISTRY
    from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY

    HAS_DETECTRON2 = True
except ImportError as e:
    HAS_DETECTRON2 = False
    if _D2_INSTALLED:  # installed but broken (e.g. built for another torch): say why det3d is alone
        logging.getLogger(__name__).warning(
            "detectron2 is installed but its parts do not import (%s): det3d works without it", e
        )

#: The base class of det3d's ``CfgNode``: Detectron2's where it is importable, else fvcore's.
CfgNodeBase = _D2CfgNode if HAS_DETECTRON2 else _FvCfgNode


def shared_registries() -> Dict[str, Registry]:
    """
    Returns:
        dict[str, Registry]: registry name (``"META_ARCH"``, ``"BACKBONE"``, ...) -> Detectron2's
        registry object; empty without detectron2 (det3d then makes its own).
    """
    if not HAS_DETECTRON2:
        return {}
    registries = (
        META_ARCH_REGISTRY,
        BACKBONE_REGISTRY,
        PROPOSAL_GENERATOR_REGISTRY,
        RPN_HEAD_REGISTRY,
        ANCHOR_GENERATOR_REGISTRY,
        ROI_HEADS_REGISTRY,
        ROI_BOX_HEAD_REGISTRY,
        ROI_MASK_HEAD_REGISTRY,
    )
    return {r._name: r for r in registries}


def shared_catalog_dicts() -> Tuple[Optional[dict], Optional[dict]]:
    """
    Returns:
        (dict, dict): the dicts in which Detectron2's ``DatasetCatalog`` (name -> function) and
        ``MetadataCatalog`` (name -> metadata) keep their entries, for det3d's catalogs to keep
        theirs in; ``(None, None)`` without detectron2.
    """
    if not HAS_DETECTRON2:
        return None, None
    return _D2DatasetCatalog.data, _D2MetadataCatalog.data


def event_storage_stack() -> List:
    """
    Returns:
        list: the stack of open ``EventStorage`` objects det3d's ``det3d.utils.events`` uses:
        Detectron2's own list (so both libraries see the storage of whichever trainer runs), or a
        new list without detectron2.
    """
    return _d2_events._CURRENT_STORAGE_STACK if HAS_DETECTRON2 else []


def _build_optimizer_honouring_det3d(cfg, model):
    """
    Detectron2's ``build_optimizer``, honouring det3d's ``SOLVER.OPTIMIZER``: ``SGD`` (or a
    config without that key) builds Detectron2's SGD as before; any other value is built by
    :func:`det3d.solver.build_optimizer` (``ADAMW``, ``ADAM``; an unknown name raises, naming it).
    """
    name = cfg.SOLVER.get("OPTIMIZER", "SGD")
    if str(name).upper() == "SGD":
        return _D2_BUILD_OPTIMIZER(cfg, model)
    from det3d.solver import build_optimizer

    return build_optimizer(cfg, model)


_D2_BUILD_OPTIMIZER = _d2_solver_build.build_optimizer if HAS_DETECTRON2 else None
# Modules that bind Detectron2's build_optimizer by name (``from detectron2.solver import ...``).
_OPTIMIZER_USERS = ("detectron2.solver", "detectron2.solver.build", "detectron2.engine.defaults")


def install() -> None:
    """
    Makes Detectron2's ``build_optimizer`` honour ``SOLVER.OPTIMIZER`` (see the module docstring);
    a no-op without detectron2, and when already done. ``import det3d`` calls it.

    Detectron2's ``DefaultTrainer`` calls the name ``build_optimizer`` bound in
    ``detectron2.engine.defaults``: the function is replaced in the modules already imported
    and in ``detectron2.solver``, where a later import of the engine binds it from.
    """
    if not HAS_DETECTRON2:
        return
    import sys

    for module_name in _OPTIMIZER_USERS:
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, "build_optimizer", None) is _D2_BUILD_OPTIMIZER:
            module.build_optimizer = _build_optimizer_honouring_det3d
