"""
Every registry of det3d's model parts.

This is the one module of det3d that imports detectron2. When detectron2 is importable, the
registries that Detectron2 also has *are* Detectron2's objects, so ``detectron2.modeling.build_model``
builds det3d models and Detectron2 projects find det3d's parts. det3d's registered names never
clash with Detectron2's (``GeneralizedRCNN3D``, not ``GeneralizedRCNN``). Without detectron2,
det3d makes its own fvcore registries with the same names.
"""

from fvcore.common.registry import Registry

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
]

try:  # pragma: no cover - detectron2 is not installable on det3d's CI machines
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
except ImportError:
    HAS_DETECTRON2 = False

    META_ARCH_REGISTRY = Registry("META_ARCH")
    META_ARCH_REGISTRY.__doc__ = """
    Registry for meta-architectures: the whole model. Called with ``obj(cfg)``; returns an
    ``nn.Module`` that takes ``list[dict]`` (see docs/conventions.md "Model input and output").
    """
    BACKBONE_REGISTRY = Registry("BACKBONE")
    BACKBONE_REGISTRY.__doc__ = """
    Registry for backbones. Called with ``obj(cfg, input_shape: ShapeSpec)``; returns a
    :class:`det3d.modeling.backbone.Backbone`.
    """
    PROPOSAL_GENERATOR_REGISTRY = Registry("PROPOSAL_GENERATOR")
    PROPOSAL_GENERATOR_REGISTRY.__doc__ = """
    Registry for proposal generators. Called with ``obj(cfg, input_shape: dict[str, ShapeSpec])``.
    """
    RPN_HEAD_REGISTRY = Registry("RPN_HEAD")
    RPN_HEAD_REGISTRY.__doc__ = """
    Registry for RPN heads. Called with ``obj(cfg, input_shape: list[ShapeSpec])``; the head maps
    a list of feature maps to per-level objectness logits and anchor deltas.
    """
    ANCHOR_GENERATOR_REGISTRY = Registry("ANCHOR_GENERATOR")
    ANCHOR_GENERATOR_REGISTRY.__doc__ = """
    Registry for anchor generators. Called with ``obj(cfg, input_shape: list[ShapeSpec])``.
    """
    ROI_HEADS_REGISTRY = Registry("ROI_HEADS")
    ROI_HEADS_REGISTRY.__doc__ = """
    Registry for ROI heads. Called with ``obj(cfg, input_shape: dict[str, ShapeSpec])``; takes
    features and proposals, returns instances (inference) or losses (training).
    """
    ROI_BOX_HEAD_REGISTRY = Registry("ROI_BOX_HEAD")
    ROI_BOX_HEAD_REGISTRY.__doc__ = """
    Registry for box heads: pooled region features -> a feature vector. Called with
    ``obj(cfg, input_shape: ShapeSpec)``.
    """
    ROI_MASK_HEAD_REGISTRY = Registry("ROI_MASK_HEAD")
    ROI_MASK_HEAD_REGISTRY.__doc__ = """
    Registry for mask heads: pooled region features -> per-class mask logits. Called with
    ``obj(cfg, input_shape: ShapeSpec)``.
    """

# det3d's own registries (Detectron2 has no counterpart).
SLICE_FUSION_REGISTRY = Registry("SLICE_FUSION")
SLICE_FUSION_REGISTRY.__doc__ = """
Registry for 2.5D slice-fusion modules: they merge the features of a slice with those of its
neighbour slices. Called with ``obj(cfg, input_shape)``.
"""
