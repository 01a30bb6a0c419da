"""
Loading 2D ImageNet-pretrained backbone weights into a det3d backbone of any dimensionality.

Users who have a 2D checkpoint on disk (official ConvNeXt, MAE / Detectron2 ViT, Hiera state
dicts; nothing is downloaded) name it in ``MODEL.CONVNEXT.PRETRAINED``, ``MODEL.VIT.PRETRAINED``
or ``MODEL.HIERA.PRETRAINED``; the backbone's build function calls :func:`load_2d_pretrained` on
the trunk it built. Per tensor, by name:

* same shape: copied;
* conv kernels ``(O, I, kh, kw)`` into ``(O, I, kd, kh, kw)``: repeated ``kd`` times along z and
  divided by ``kd`` (I3D inflation: a z-constant input gives the 2D response);
* RGB stems into another number of input channels: summed over RGB for one channel, else
  cycled and scaled by ``3 / C`` (timm's rule);
* absolute position embeddings ``(1, [1 +] h*w, C)``: the class token dropped, the 2D grid
  taken as a z-constant 3D grid and interpolated to the model's grid (trilinear; bicubic in 2D);
* relative position tables ``(L, C)``: linearly resized to the model's length; the z table,
  which a 2D model lacks, keeps its (zero) initialisation;
* anything else that does not fit is left as initialised and reported.

Tensors of the file that the model lacks (classification head, final norm, class token) are
reported as unused. ``MODEL.WEIGHTS`` (a whole det3d model) is loaded after the model is built and
overrides all of this.
"""

import logging
import math
import os
import pickle
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .detection_checkpoint import CheckpointError

__all__ = ["read_state_dict", "inflate_state_dict", "load_2d_pretrained"]

logger = logging.getLogger(__name__)

_NESTED_KEYS = ("model", "model_state", "state_dict")
_PREFIXES = ("module.", "backbone.bottom_up.", "backbone.net.", "backbone.", "encoder.")


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """
    Reads a state dict with ``torch.load(weights_only=True)``: a bare one, or one nested under
    ``"model"`` / ``"model_state"`` / ``"state_dict"``. Errors name the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Pretrained weights {path!r} not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"Pretrained weights {path!r} are unreadable: {e}") from e
    for key in _NESTED_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"Pretrained weights {path!r} hold no state dict")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"Pretrained weights {path!r}: no tensors (keys {sorted(data)[:8]})")
    # Strip one common prefix (DDP's "module.", a detection model's "backbone.*").
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
            break
    return tensors


def _adapt_in_channels(w: torch.Tensor, channels: int) -> torch.Tensor:
    """A stem kernel (O, I, ...) for ``channels`` input channels instead of I."""
    if channels == 1:
        return w.sum(dim=1, keepdim=True)
    repeats = math.ceil(channels / w.shape[1])
    return w.repeat(1, repeats, *([1] * (w.dim() - 2)))[:, :channels] * (w.shape[1] / channels)


def _inflate_kernel(w: torch.Tensor, target: torch.Size) -> torch.Tensor:
    """(O, I, kh, kw) -> (O, I, kd, kh, kw): repeated along z, divided by kd."""
    kd = target[2]
    return w.unsqueeze(2).repeat(1, 1, kd, 1, 1) / kd


def _pos_grid(n: int, model_grid: Tuple[int, ...]) -> Tuple[Tuple[int, ...], bool]:
    """The 2D (or model-shaped) grid of a file's ``n`` position tokens, and whether one is a class
    token."""
    if n == math.prod(model_grid):
        return tuple(model_grid), False
    for extra in (0, 1):
        side = math.isqrt(n - extra)
        if side * side == n - extra:
            return (side, side), bool(extra)
    raise ValueError(
        f"cannot read {n} position tokens as a square grid (with a class token or not)"
    )


def _inflate_pos_embed(src: torch.Tensor, model_grid: Tuple[int, ...]) -> torch.Tensor:
    """(1, [1 +] prod(grid_file), C) -> (1, prod(model_grid), C)."""
    grid, has_cls = _pos_grid(src.shape[1], model_grid)
    pos = src[:, 1:] if has_cls else src
    C = pos.shape[-1]
    pos = pos.reshape(1, *grid, C)
    while pos.dim() - 2 < len(model_grid):
        pos = pos.unsqueeze(1)  # a z-constant 3D grid of depth 1
    if tuple(pos.shape[1:-1]) != tuple(model_grid):
        mode = "bicubic" if len(model_grid) == 2 else "trilinear"
        pos = pos.movedim(-1, 1)
        pos = F.interpolate(pos, size=tuple(model_grid), mode=mode, align_corners=False)
        pos = pos.movedim(1, -1)
    return pos.reshape(1, -1, C)


def inflate_state_dict(
    src: Dict[str, torch.Tensor], model: nn.Module
) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
    """
    Fits the tensors of ``src`` (2D or same-dimensional) to ``model``'s state dict by name.

    Returns:
        state (dict): tensors shaped as the model's, for ``model.load_state_dict(strict=False)``.
        report (dict): lists of names: ``"copied"``, ``"inflated"`` (changed to fit, with how),
            ``"missing"`` (in the model, not the file), ``"unused"`` (in the file, not the
            model), ``"skipped"`` (shapes that cannot be fitted).
    """
    target = model.state_dict()
    out, report = {}, {"copied": [], "inflated": [], "missing": [], "unused": [], "skipped": []}
    pos_grid = getattr(model, "pretrain_grid", None)
    for name, want in target.items():
        if name not in src:
            report["missing"].append(name)
            continue
        have = src[name]
        if have.shape == want.shape:
            out[name] = have.to(want.dtype)
            report["copied"].append(name)
            continue
        new, how = None, ""
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "pos_embed" and pos_grid is not None and have.dim() == 3:
            new, how = _inflate_pos_embed(have, pos_grid), "position grid resized"
        elif leaf.startswith("rel_pos_") and have.dim() == 2 and have.shape[1] == want.shape[1]:
            new = F.interpolate(
                have.t()[None], size=want.shape[0], mode="linear", align_corners=False
            )[0].t()
            how = "relative table resized"
        elif have.dim() in (4, 5) and want.dim() in (4, 5) and want.dim() >= have.dim():
            w = have
            if w.shape[1] != want.shape[1] and w.shape[0] == want.shape[0] and w.shape[1] == 3:
                w, how = _adapt_in_channels(w, want.shape[1]), "RGB summed/cycled, "
            if w.dim() == 4 and want.dim() == 5:
                w, how = _inflate_kernel(w, want.shape), how + "inflated along z"
            if w.shape == want.shape:
                new = w
        if new is not None and new.shape == want.shape:
            out[name] = new.to(want.dtype)
            report["inflated"].append(f"{name} ({how.rstrip(', ')})")
        else:
            report["skipped"].append(f"{name}: {tuple(have.shape)} vs {tuple(want.shape)}")
    report["unused"] = [k for k in src if k not in target]
    return out, report


def load_2d_pretrained(model: nn.Module, path: str) -> Dict[str, List[str]]:
    """
    Loads the local file ``path`` into ``model`` (a backbone trunk: :class:`ConvNeXt`,
    :class:`ViT` or :class:`Hiera`) with :func:`inflate_state_dict`, and logs what was copied,
    inflated, missing, unused and skipped.

    Returns:
        the report of :func:`inflate_state_dict`. Raises ``CheckpointError`` when the file has no
        tensor that fits the model (most likely the wrong file or key names).
    """
    src = read_state_dict(path)
    state, report = inflate_state_dict(src, model)
    if not state:
        raise CheckpointError(
            f"Pretrained weights {path!r}: none of its {len(src)} tensors fits "
            f"{type(model).__name__} (file keys e.g. {sorted(src)[:5]}; model keys e.g. "
            f"{sorted(model.state_dict())[:5]})"
        )
    model.load_state_dict(state, strict=False)
    logger.info(
        f"Loaded {path}: {len(report['copied'])} tensors copied, {len(report['inflated'])} "
        f"inflated, {len(report['missing'])} missing (kept their initialisation), "
        f"{len(report['unused'])} unused, {len(report['skipped'])} skipped"
    )
    for key in ("inflated", "missing", "skipped"):
        if report[key]:
            logger.info(f"  {key}: {', '.join(report[key])}")
    if report["skipped"]:
        logger.warning(f"{path}: tensors of another shape were not loaded: {report['skipped']}")
    return report
