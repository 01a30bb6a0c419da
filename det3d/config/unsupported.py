"""
Detectron2 keys that det3d keeps so that Detectron2 config files load, but does not implement:
asking for one is an error at build time that names the key, never a setting silently ignored.
"""

from typing import Any, Callable, List, Tuple

__all__ = ["check_supported", "UNSUPPORTED_KEYS"]

# (full key, is it asked for?, why not / what to do)
UNSUPPORTED_KEYS: List[Tuple[str, Callable[[Any], bool], str]] = [
    (
        "TEST.AUG.ENABLED",
        lambda cfg: bool(cfg.TEST.AUG.ENABLED),
        "test-time augmentation is not implemented in det3d",
    ),
    (
        "TEST.PRECISE_BN.ENABLED",
        lambda cfg: bool(cfg.TEST.PRECISE_BN.ENABLED),
        "precise BN statistics are not implemented in det3d (its configs train with GN, or "
        "freeze BN with MODEL.RESNETS.NORM FrozenBN)",
    ),
    (
        "MODEL.LOAD_PROPOSALS",
        lambda cfg: bool(cfg.MODEL.LOAD_PROPOSALS),
        "precomputed proposals are not implemented in det3d; train the RPN in the same model "
        "or in a first stage (configs/Synthetic/*stage*.yaml, MODEL.FREEZE_MODULES)",
    ),
    (
        "MODEL.PROPOSAL_GENERATOR.NAME",
        lambda cfg: cfg.MODEL.PROPOSAL_GENERATOR.NAME == "PrecomputedProposals",
        "precomputed proposals are not implemented in det3d; use 'RPN3D', or a frozen RPN of an "
        "earlier stage (MODEL.FREEZE_MODULES)",
    ),
]


def check_supported(
    cfg,
    keys: List[Tuple[str, Callable[[Any], bool], str]] = UNSUPPORTED_KEYS,
    error: type = NotImplementedError,
) -> None:
    """
    Args:
        keys: (full key, is it asked for?, why not) entries; a model with keys of its own that it
            does not implement passes its table (e.g. ``SliceFusionRCNN``).
        error: the exception to raise.

    Raises:
        ``error`` naming the first key of ``keys`` that ``cfg`` sets.
    """
    for key, asked, why in keys:
        node = cfg
        try:
            for part in key.split(".")[:-1]:
                node = node[part]
            value = node[key.split(".")[-1]]
        except KeyError:  # a config without that section (e.g. a project's own CfgNode)
            continue
        if asked(cfg):
            raise error(f"{key} = {value!r}: {why}. Unset it to run.")
