"""Anchors of dense detectors (RPN) on the grid of every feature level, in 2D or 3D."""

import math
from typing import List, Sequence

import torch
from torch import nn

from det3d.config import configurable
from det3d.layers import ShapeSpec
from det3d.structures import Boxes
from det3d.utils.axes import array_shape_to_box_order

from .registries import ANCHOR_GENERATOR_REGISTRY

__all__ = ["DefaultAnchorGenerator3D", "build_anchor_generator"]


def _broadcast_params(params, num_features: int, name: str) -> List[List[float]]:
    """
    One list of values per feature level from a config value: a flat list is used for every
    level, a list of one list is repeated, a list of ``num_features`` lists is taken as is.
    """
    if not isinstance(params, (list, tuple)) or len(params) == 0:
        raise ValueError(f"{name}={params!r} must be a non-empty list (of lists)")
    if not isinstance(params[0], (list, tuple)):
        return [list(params)] * num_features
    if len(params) == 1:
        return [list(params[0])] * num_features
    if len(params) != num_features:
        raise ValueError(
            f"{name} has {len(params)} lists but there are {num_features} feature levels; give one "
            "list per level or one list for all"
        )
    return [list(p) for p in params]


class _BufferList(nn.Module):
    """A list of tensors that moves with the module (``.to(device)``) but is not saved."""

    def __init__(self, buffers: List[torch.Tensor]):
        super().__init__()
        for i, buffer in enumerate(buffers):
            self.register_buffer(str(i), buffer, persistent=False)

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self):
        return iter(self._buffers.values())


@ANCHOR_GENERATOR_REGISTRY.register()
class DefaultAnchorGenerator3D(nn.Module):
    """
    Axis-aligned anchors at every location of every feature level.

    Cell anchors of a level (centred at 0), for each size ``s``, then each xy aspect ratio ``a``
    (height / width), then each z aspect ratio ``r`` (3D only), in that nesting order:
    ``w = s / sqrt(a)``, ``h = s * sqrt(a)``, ``d = s * r``.

    **Order of the anchors of a level** (the RPN head's flattened outputs follow it): spatial
    locations in array C-order (z slowest, then y, then x), and for each location its cell
    anchors; i.e. the anchor of location ``(k, i, j)`` and cell anchor ``c`` is at row
    ``((k * H + i) * W + j) * A + c``. A head output ``(N, A, D, H, W)`` permuted to
    ``(N, D, H, W, A)`` and flattened matches it.

    The anchors of location ``(k, i, j)`` are centred at ``((j + offset) * stride_x,
    (i + offset) * stride_y, (k + offset) * stride_z)`` where the strides are those of the
    array axes W, H, D of the level.
    """

    box_dim: int

    @configurable
    def __init__(
        self,
        *,
        sizes: List[List[float]],
        aspect_ratios: List[List[float]],
        strides: List[Sequence[int]],
        z_aspect_ratios: List[List[float]] = None,
        offset: float = 0.0,
    ):
        """
        Args:
            sizes: per level, the xy sides ``s`` (input voxels); broadcast like Detectron2's.
            aspect_ratios: per level (or shared) xy aspect ratios, height / width.
            strides: per level, the stride per array axis (``(D, H, W)`` or ``(H, W)``); its
                length sets the number of spatial dims.
            z_aspect_ratios: per level (or shared) depth / xy side; 3D only (default ``[[1.0]]``).
            offset: anchor centres at ``(index + offset) * stride``; in [0, 1).
        """
        super().__init__()
        self.strides = [tuple(int(s) for s in st) for st in strides]
        ndims = {len(s) for s in self.strides}
        if len(ndims) != 1 or ndims.pop() not in (2, 3):
            raise ValueError(f"Anchor strides {self.strides} must all have 2 or all have 3 axes")
        self.ndim = len(self.strides[0])
        self.box_dim = 2 * self.ndim
        self.num_features = len(self.strides)
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"Anchor offset={offset} must be in [0, 1)")
        self.offset = offset

        sizes = _broadcast_params(sizes, self.num_features, "ANCHOR_GENERATOR.SIZES")
        aspect_ratios = _broadcast_params(
            aspect_ratios, self.num_features, "ANCHOR_GENERATOR.ASPECT_RATIOS"
        )
        if self.ndim == 3:
            z_aspect_ratios = _broadcast_params(
                z_aspect_ratios if z_aspect_ratios is not None else [[1.0]],
                self.num_features,
                "ANCHOR_GENERATOR.Z_ASPECT_RATIOS",
            )
        else:
            z_aspect_ratios = [[1.0]] * self.num_features  # unused in 2D
        self.cell_anchors = _BufferList(
            [
                self.generate_cell_anchors(s, a, z)
                for s, a, z in zip(sizes, aspect_ratios, z_aspect_ratios)
            ]
        )

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        strides = [tuple(x.stride) for x in input_shape]
        ndim = cfg.MODEL.SPATIAL_DIMS
        if any(len(s) != ndim for s in strides):
            raise ValueError(
                f"Feature strides {strides} do not have MODEL.SPATIAL_DIMS={ndim} axes"
            )
        return {
            "sizes": cfg.MODEL.ANCHOR_GENERATOR.SIZES,
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "z_aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.Z_ASPECT_RATIOS,
            "strides": strides,
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
        }

    def generate_cell_anchors(
        self,
        sizes: Sequence[float],
        aspect_ratios: Sequence[float],
        z_aspect_ratios: Sequence[float],
    ) -> torch.Tensor:
        """
        Returns:
            Tensor: (len(sizes) * len(aspect_ratios) [* len(z_aspect_ratios)], 2*ndim) anchors
            centred at 0, sizes outermost, z ratios innermost.
        """
        anchors = []
        for size in sizes:
            for a in aspect_ratios:
                w, h = size / math.sqrt(a), size * math.sqrt(a)
                if self.ndim == 2:
                    anchors.append([-w / 2, -h / 2, w / 2, h / 2])
                    continue
                for r in z_aspect_ratios:
                    d = size * r
                    anchors.append([-w / 2, -h / 2, -d / 2, w / 2, h / 2, d / 2])
        return torch.tensor(anchors, dtype=torch.float32)

    @property
    def num_cell_anchors(self) -> List[int]:
        """Alias of :attr:`num_anchors` (Detectron2's older name)."""
        return self.num_anchors

    @property
    def num_anchors(self) -> List[int]:
        """Number of anchors per spatial location, for each level."""
        return [len(cell_anchors) for cell_anchors in self.cell_anchors]

    def _grid_anchors(self, grid_sizes: List[Sequence[int]]) -> List[torch.Tensor]:
        anchors = []
        for size, stride, base in zip(grid_sizes, self.strides, self.cell_anchors):
            axes = [
                (torch.arange(n, dtype=torch.float32, device=base.device) + self.offset) * s
                for n, s in zip(size, stride)
            ]
            grids = torch.meshgrid(*axes, indexing="ij")  # array order, C-order flattening
            centres = [g.reshape(-1) for g in array_shape_to_box_order(grids)]  # x, y[, z]
            shifts = torch.stack(centres + centres, dim=1)  # (L, 2*ndim)
            anchors.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, self.box_dim))
        return anchors

    def forward(self, features: List[torch.Tensor]) -> List[Boxes]:
        """
        Args:
            features: feature maps ``(N, C, *spatial)`` of every level, finest first.

        Returns:
            list[Boxes]: per level, ``(prod(spatial) * A, 2*ndim)`` anchors in the order of the
            class docstring; the same for every image of the batch.
        """
        if len(features) != self.num_features:
            raise ValueError(
                f"Anchor generator built for {self.num_features} levels got {len(features)} "
                "features"
            )
        grid_sizes = [tuple(f.shape[-self.ndim :]) for f in features]
        return [Boxes(a) for a in self._grid_anchors(grid_sizes)]


def build_anchor_generator(cfg, input_shape: List[ShapeSpec]) -> nn.Module:
    """``ANCHOR_GENERATOR_REGISTRY.get(cfg.MODEL.ANCHOR_GENERATOR.NAME)(cfg, input_shape)``."""
    return ANCHOR_GENERATOR_REGISTRY.get(cfg.MODEL.ANCHOR_GENERATOR.NAME)(cfg, input_shape)
