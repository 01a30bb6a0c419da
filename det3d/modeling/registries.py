"""
Every registry of det3d's model parts.

The registries Detectron2 also has come from :func:`det3d.bridge.detectron2.shared_registries`:
where detectron2 is importable they *are* Detectron2's objects, so
``detectron2.modeling.build_model`` builds det3d models and Detectron2 projects find det3d's parts
(det3d's names never clash with Detectron2's: ``GeneralizedRCNN3D``, not ``GeneralizedRCNN``).
Without detectron2, det3d makes its own fvcore registries with the same names.
"""

from fvcore.common.registry import Registry

from det3d.bridge.detectron2 import HAS_DETECTRON2, shared_registries

__all__ = [
    "HAS_DETECTRON2",
    "META_ARCH_REGISTRY",
    "BACKBONE_REGISTRY",
    "PROPOSAL_GENERATOR_REGISTRY",
    "RPN_HEAD_REGISTRY",
    "ANCHOR_GENERATOR_REGISTRY",
    "ROI_HEADS_REGISTRY",
    "ROI_BOX_HEAD_REGISTRY",
    "ROI_MASK_HEAD_REGISTRY",
    "SLICE_FUSION_REGISTRY",
    "FOREGROUND_HEAD_REGISTRY",
]

_SHARED = shared_registries()


def _registry(name: str, doc: str) -> Registry:
    """Detectron2's registry ``name`` where it is importable, else a new one documented by ``doc``."""
    if name in _SHARED:
        return _SHARED[name]
    registry = Registry(name)
    registry.__doc__ = doc
    return registry


META_ARCH_REGISTRY = _registry(
    "META_ARCH",
    """
    Registry for meta-architectures: the whole model. Called with ``obj(cfg)``; returns an
    ``nn.Module`` that takes ``list[dict]`` (see docs/conventions.md "Model input and output").
    """,
)
BACKBONE_REGISTRY = _registry(
    "BACKBONE",
    """
    Registry for backbones. Called with ``obj(cfg, input_shape: ShapeSpec)``; returns a
    :class:`det3d.modeling.backbone.Backbone`.
    """,
)
PROPOSAL_GENERATOR_REGISTRY = _registry(
    "PROPOSAL_GENERATOR",
    """
    Registry for proposal generators. Called with ``obj(cfg, input_shape: dict[str, ShapeSpec])``.
    """,
)
RPN_HEAD_REGISTRY = _registry(
    "RPN_HEAD",
    """
    Registry for RPN heads. Called with ``obj(cfg, input_shape: list[ShapeSpec])``; the head maps
    a list of feature maps to per-level objectness logits and anchor deltas.
    """,
)
ANCHOR_GENERATOR_REGISTRY = _registry(
    "ANCHOR_GENERATOR",
    """
    Registry for anchor generators. Called with ``obj(cfg, input_shape: list[ShapeSpec])``.
    """,
)
ROI_HEADS_REGISTRY = _registry(
    "ROI_HEADS",
    """
    Registry for ROI heads. Called with ``obj(cfg, input_shape: dict[str, ShapeSpec])``; takes
    features and proposals, returns instances (inference) or losses (training).
    """,
)
ROI_BOX_HEAD_REGISTRY = _registry(
    "ROI_BOX_HEAD",
    """
    Registry for box heads: pooled region features -> a feature vector. Called with
    ``obj(cfg, input_shape: ShapeSpec)``.
    """,
)
ROI_MASK_HEAD_REGISTRY = _registry(
    "ROI_MASK_HEAD",
    """
    Registry for mask heads: pooled region features -> per-class mask logits. Called with
    ``obj(cfg, input_shape: ShapeSpec)``.
    """,
)

# det3d's own registries (Detectron2 has no counterpart).
SLICE_FUSION_REGISTRY = Registry("SLICE_FUSION")
SLICE_FUSION_REGISTRY.__doc__ = """
Registry for 2.5D slice-fusion modules: they merge the features of a slice with those of its
neighbour slices. Called with ``obj(cfg, input_shape)``.
"""
FOREGROUND_HEAD_REGISTRY = Registry("FOREGROUND_HEAD")
FOREGROUND_HEAD_REGISTRY.__doc__ = """
Registry for foreground heads: backbone features and the input -> a foreground probability per
input voxel, which sets where objects end in the label volume. Called with
``obj(cfg, input_shape: dict[str, ShapeSpec])`` (see det3d/modeling/foreground_head.py).
"""
