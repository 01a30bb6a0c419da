"""
The slice-fusion protocol of the 2.5D model, the slice windows it works on, and the builder.

A fusion module mixes each target slice with its ``2k+1``-slice window. It acts at one *stage*:

* ``"input"``: on the window's normalised slices, before the 2D backbone; it takes
  ``{"image": (B, S, C, H, W)}`` and returns ``{"image": (B, C', H, W)}`` (the backbone is built
  for ``C'`` input channels);
* ``"features"``: on every FPN level after one shared 2D backbone has run on each slice of the
  window; it takes ``{level: (B, S, C, h, w)}`` and returns ``{level: (B, C, h, w)}``.

Call contract (``SLICE_FUSION_REGISTRY``): ``obj(cfg, input_shape: dict[str, ShapeSpec])``, the
shapes of what it fuses (``{"image": ShapeSpec(channels=C)}`` at the input stage, the backbone's
``output_shape()`` at the features stage); ``output_shape()`` gives what it returns; after the
backbone is built, the meta-architecture calls ``init_backbone(backbone)`` (a no-op unless the
fusion changes the backbone's input, as :class:`ChannelStack` does).
"""

from typing import Dict, List

import torch
from torch import nn

from det3d.config import configurable
from det3d.layers import ShapeSpec

from ..registries import SLICE_FUSION_REGISTRY

__all__ = [
    "SliceFusion",
    "WindowFuser",
    "build_slice_fusion",
    "check_num_slices",
    "slice_window_indices",
    "base_slice_weights",
    "PAD_MODES",
    "FUSION_STAGES",
    "FUSION_INITS",
]

PAD_MODES = ("replicate", "reflect", "zeros")
FUSION_STAGES = ("input", "features")
FUSION_INITS = ("center", "uniform")


def check_num_slices(num_slices: int) -> int:
    """``MODEL.SLICE_FUSION.NUM_SLICES`` must be odd and >= 1 (the target slice is the centre)."""
    if not isinstance(num_slices, int) or num_slices < 1 or num_slices % 2 == 0:
        raise ValueError(
            f"MODEL.SLICE_FUSION.NUM_SLICES must be an odd integer >= 1 (2k+1 slices centred on "
            f"the target slice), got {num_slices!r}"
        )
    return num_slices


def slice_window_indices(z: int, depth: int, num_slices: int, pad_mode: str) -> List[int]:
    """
    The slices of the window of target slice ``z``: ``z-k .. z+k``, where those beyond the volume
    are ``"replicate"``: the end slice, ``"reflect"``: mirrored about the end slice (``-1 -> 1``),
    ``"zeros"``: -1 (a slice of zeros).

    Args:
        z: target slice, ``0 <= z < depth``.
        depth: number of slices in the volume; must be at least ``num_slices``.
        num_slices: odd window size ``2k+1``.
        pad_mode: one of :data:`PAD_MODES` (``MODEL.SLICE_FUSION.PAD_MODE``).

    Returns:
        list of ``num_slices`` slice indices (or -1).
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(
            f"MODEL.SLICE_FUSION.PAD_MODE must be one of {PAD_MODES}, got {pad_mode!r}"
        )
    if depth < num_slices:
        raise ValueError(
            f"a volume of {depth} slices is thinner than the window of "
            f"MODEL.SLICE_FUSION.NUM_SLICES={num_slices}"
        )
    if not 0 <= z < depth:
        raise IndexError(f"target slice {z} is outside the volume's {depth} slices")
    k = num_slices // 2
    out = []
    for i in range(z - k, z + k + 1):
        if 0 <= i < depth:
            out.append(i)
        elif pad_mode == "replicate":
            out.append(min(max(i, 0), depth - 1))
        elif pad_mode == "reflect":
            out.append(-i if i < 0 else 2 * (depth - 1) - i)
        else:
            out.append(-1)
    return out


def base_slice_weights(num_slices: int, init: str) -> torch.Tensor:
    """
    ``(S,)`` initial per-slice weights: ``"center"`` all on the centre slice (the fusion starts as
    the 2D model on the centre slice, exactly), ``"uniform"`` ``1/S`` each.
    """
    if init not in FUSION_INITS:
        raise ValueError(f"MODEL.SLICE_FUSION.INIT must be one of {FUSION_INITS}, got {init!r}")
    if init == "uniform":
        return torch.full((num_slices,), 1.0 / num_slices)
    w = torch.zeros(num_slices)
    w[num_slices // 2] = 1.0
    return w


class WindowFuser(nn.Module):
    """
    One fusion of a window at one place (the input, or one FPN level): ``(B, S, C, H, W) ->
    (B, C, H, W)``. Its ``base`` weights (``(S,)``, learned) start as :func:`base_slice_weights`;
    the learned parts that refine them start at zero, so every fuser starts as its base
    weighting: with ``"center"`` exactly the centre slice.
    """

    def __init__(self, num_slices: int, init: str):
        super().__init__()
        self.num_slices = num_slices
        self.base = nn.Parameter(base_slice_weights(num_slices, init))

    def weighted_sum(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_s weights[s] * x[:, s]``, with weights (S,) or (B, S, 1 or C, H, W)."""
        if weights.dim() == 1:
            weights = weights.view(1, -1, *([1] * (x.dim() - 2)))
        return (weights * x).sum(dim=1)


class SliceFusion(nn.Module):
    """
    Base of the registered fusion modules: one :class:`WindowFuser` for the input, or for the FPN
    levels (one per level with ``per_level``, else one shared by all, which needs equal channels).
    Subclasses implement :meth:`make_fuser`.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: Dict[str, ShapeSpec],
        num_slices: int = 3,
        stage: str = "features",
        per_level: bool = False,
        init: str = "center",
        hidden_dim: int = 16,
        window_size: int = 8,
        kernel_size: int = 3,
    ):
        """
        Args:
            input_shape: what is fused (see the module docstring).
            num_slices: ``S = 2k+1``.
            stage: ``"input"`` or ``"features"``.
            per_level: separate weights for each FPN level (features stage only).
            init: ``"center"`` or ``"uniform"`` (see :func:`base_slice_weights`).
            hidden_dim, window_size, kernel_size: used by the fusions that have such parts.
        """
        super().__init__()
        self.num_slices = check_num_slices(num_slices)
        if stage not in FUSION_STAGES:
            raise ValueError(
                f"MODEL.SLICE_FUSION.STAGE must be one of {FUSION_STAGES}, got {stage!r}"
            )
        if per_level and stage != "features":
            raise ValueError(
                "MODEL.SLICE_FUSION.PER_LEVEL needs MODEL.SLICE_FUSION.STAGE 'features' (one "
                f"weighting per FPN level), got STAGE {stage!r}"
            )
        base_slice_weights(num_slices, init)  # checks init
        self.stage, self.per_level, self.init = stage, per_level, init
        self.hidden_dim, self.window_size, self.kernel_size = hidden_dim, window_size, kernel_size
        self.input_shape = dict(input_shape)
        channels = {k: s.channels for k, s in self.input_shape.items()}
        if per_level or stage == "input":
            self.fusers = nn.ModuleDict({k: self.make_fuser(c) for k, c in channels.items()})
        else:
            if len(set(channels.values())) != 1:
                raise ValueError(
                    f"One fusion shared by all FPN levels needs equal channels, got {channels}; "
                    "set MODEL.SLICE_FUSION.PER_LEVEL True"
                )
            self.fusers = nn.ModuleDict({"shared": self.make_fuser(next(iter(channels.values())))})

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        sf = cfg.MODEL.SLICE_FUSION
        return {
            "input_shape": input_shape,
            "num_slices": sf.NUM_SLICES,
            "stage": sf.STAGE,
            "per_level": sf.PER_LEVEL,
            "init": sf.INIT,
            "hidden_dim": sf.HIDDEN_DIM,
            "window_size": sf.WINDOW_SIZE,
            "kernel_size": sf.CONV_KERNEL_SIZE,
        }

    def make_fuser(self, channels: int) -> nn.Module:
        """A :class:`WindowFuser` for ``channels`` channels."""
        raise NotImplementedError

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self.input_shape)

    def init_backbone(self, backbone: nn.Module) -> None:
        """Called once the backbone is built; nothing to do for most fusions."""

    def forward(self, x: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: name -> (B, S, C, H, W).

        Returns:
            name -> (B, C', H, W).
        """
        out = {}
        for name, t in x.items():
            if t.dim() != 5 or t.shape[1] != self.num_slices:
                raise ValueError(
                    f"{type(self).__name__}: {name!r} is {tuple(t.shape)}, expected "
                    f"(B, S={self.num_slices}, C, H, W)"
                )
            fuser = self.fusers[name if name in self.fusers else "shared"]
            out[name] = fuser(t)
        return out


def build_slice_fusion(cfg, input_shape: Dict[str, ShapeSpec]) -> SliceFusion:
    """``SLICE_FUSION_REGISTRY.get(cfg.MODEL.SLICE_FUSION.NAME)(cfg, input_shape)``."""
    return SLICE_FUSION_REGISTRY.get(cfg.MODEL.SLICE_FUSION.NAME)(cfg, input_shape)


