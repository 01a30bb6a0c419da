"""``build_model`` and module freezing (training stages)."""

import logging
from typing import Iterable

from torch import nn

from det3d.config.unsupported import check_supported
from det3d.utils.env import resolve_device

from ..registries import META_ARCH_REGISTRY

__all__ = ["build_model", "freeze_modules", "count_parameters", "META_ARCH_REGISTRY"]

logger = logging.getLogger(__name__)


def freeze_modules(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """
    Freezes top-level children of ``model``: their parameters get ``requires_grad=False`` and
    they are put in eval mode. The names are recorded in ``model.frozen_modules``; det3d's
    meta-architectures keep those children in eval mode when ``model.train()`` is called and
    take no losses from them (a frozen RPN only gives proposals).

    Args:
        model: the meta-architecture.
        names: names of its children, e.g. ``["backbone", "proposal_generator"]``.

    Raises:
        ValueError: a name is not a child of ``model``; the message lists the children.
    """
    names = list(names)
    children = dict(model.named_children())
    unknown = [n for n in names if n not in children]
    if unknown:
        raise ValueError(
            f"MODEL.FREEZE_MODULES names {unknown}, which {type(model).__name__} does not have; "
            f"its modules are {sorted(children)}"
        )
    frozen = list(getattr(model, "frozen_modules", ()))
    for name in names:
        module = children[name]
        for p in module.parameters():
            p.requires_grad_(False)
        module.eval()
        if name not in frozen:
            frozen.append(name)
    model.frozen_modules = tuple(frozen)
    return model


def count_parameters(model: nn.Module):
    """
    Returns:
        (int, int): total and trainable (``requires_grad``) parameter counts.
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def build_model(cfg) -> nn.Module:
    """
    Builds the meta-architecture ``cfg.MODEL.META_ARCHITECTURE``, moves it to
    ``cfg.MODEL.DEVICE`` and freezes ``cfg.MODEL.FREEZE_MODULES``. Weights are not loaded
    (use a checkpointer with ``cfg.MODEL.WEIGHTS``).
    """
    check_supported(cfg)  # a Detectron2 key det3d does not implement is an error, not ignored
    meta_arch = cfg.MODEL.META_ARCHITECTURE
    device = resolve_device(cfg.MODEL.DEVICE, "MODEL.DEVICE")  # before any work: name the key
    model = META_ARCH_REGISTRY.get(meta_arch)(cfg)
    model.to(device)
    freeze_modules(model, cfg.MODEL.FREEZE_MODULES)
    total, trainable = count_parameters(model)
    frozen = list(getattr(model, "frozen_modules", ()))
    logger.info(
        f"Model {meta_arch}: {trainable:,} trainable parameters of {total:,}"
        + (f" (frozen: {', '.join(frozen)})" if frozen else "")
    )
    return model
