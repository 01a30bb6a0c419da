"""
Multi-level RoI pooling for FPN features, in N spatial dims.

A box is pooled from one pyramid level, chosen by its size (FPN paper, eq. 1, with the
geometric-mean side of the box in place of ``sqrt(area)``). Strides may differ per axis
(anisotropic volumes): the pooler scales each box coordinate by its own axis' scale and calls
``roi_align`` with ``spatial_scale=1``, which is the same as per-axis spatial scaling, the
half-voxel offset of ``aligned=True`` included (``x * s - 0.5`` either way).
"""

import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn

from det3d.layers import cat, roi_align
from det3d.structures import Boxes
from det3d.utils.axes import as_tuple

__all__ = ["ROIPooler", "assign_boxes_to_levels", "convert_boxes_to_pooler_format"]


def assign_boxes_to_levels(
    box_lists: List[Boxes],
    min_level: int,
    max_level: int,
    canonical_box_size: float,
    canonical_level: int,
) -> torch.Tensor:
    """
    Maps each box to the pyramid level it is pooled from:
    ``floor(canonical_level + log2(gmean_side / canonical_box_size + 1e-8))`` clamped to
    ``[min_level, max_level]``, where ``gmean_side`` is the box volume to the power ``1/ndim``
    (sqrt of the area in 2D, cube root of the volume in 3D).

    Args:
        box_lists: one Boxes per image.

    Returns:
        Tensor: (M,) int64, the level of each box relative to ``min_level`` (0 = finest level),
        boxes in the order of ``cat(box_lists)``.
    """
    if len(box_lists) == 0:
        return torch.zeros((0,), dtype=torch.int64)
    ndim = box_lists[0].tensor.shape[-1] // 2
    volumes = cat([boxes.volume() for boxes in box_lists])
    gmean_side = volumes.clamp(min=0).pow(1.0 / ndim)
    levels = torch.floor(canonical_level + torch.log2(gmean_side / canonical_box_size + 1e-8))
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


def convert_boxes_to_pooler_format(box_lists: List[Boxes]) -> torch.Tensor:
    """
    Returns:
        Tensor: (M, 1 + 2*ndim): the image index in the batch, then the box.
    """
    rois = []
    for i, boxes in enumerate(box_lists):
        t = boxes.tensor
        rois.append(torch.cat([torch.full_like(t[:, :1], float(i)), t], dim=1))
    return cat(rois, dim=0)


def _level_scales(scales, ndim: int) -> List[Tuple[float, ...]]:
    out = []
    for s in scales:
        if isinstance(s, (int, float)):
            s = (float(s),) * ndim
        s = tuple(float(v) for v in s)
        if len(s) != ndim:
            raise ValueError(f"ROIPooler: scale {s} has {len(s)} axes, expected {ndim}")
        out.append(s)
    return out


class ROIPooler(nn.Module):
    """
    Pools a fixed-size feature block for every box from a list of feature maps (one per pyramid
    level, finest first).
    """

    def __init__(
        self,
        output_size: Union[int, Sequence[int]],
        scales: Sequence[Union[float, Sequence[float]]],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: float = 224,
        canonical_level: int = 4,
        ndim: int = 3,
    ):
        """
        Args:
            output_size: pooled size, an int or one value per axis (array order).
            scales: one entry per level, finest first: ``1 / stride``, a float or a per-axis
                tuple in array order (``(1/sz, 1/sy, 1/sx)`` in 3D).
            sampling_ratio: samples per output bin and axis; 0 = adaptive.
            pooler_type: "ROIAlignV2" (``aligned=True``, half-voxel correct) or "ROIAlign".
            canonical_box_size, canonical_level: a box whose geometric-mean side equals
                ``canonical_box_size`` is pooled from level ``canonical_level`` (level k has
                stride ``2**k`` on its largest-stride axis).
            ndim: number of spatial dims.
        """
        super().__init__()
        self.ndim = ndim
        self.output_size = as_tuple(output_size, ndim)
        self.sampling_ratio = int(sampling_ratio)
        if pooler_type == "ROIAlignV2":
            self.aligned = True
        elif pooler_type == "ROIAlign":
            self.aligned = False
        else:
            raise ValueError(
                f"Unknown pooler type {pooler_type!r}; det3d has 'ROIAlignV2' and 'ROIAlign'"
            )
        if len(scales) == 0:
            raise ValueError("ROIPooler needs at least one feature level (scales is empty)")
        self.scales = _level_scales(scales, ndim)
        # The level of a feature map is set by its largest stride (the in-plane one, for
        # anisotropic volumes whose z is downsampled less).
        levels = [-math.log2(min(s)) for s in self.scales]
        for lvl, s in zip(levels, self.scales):
            if not math.isclose(lvl, round(lvl), abs_tol=1e-6):
                raise ValueError(f"ROIPooler: largest stride {1 / min(s)} is not a power of 2")
        levels = [int(round(lvl)) for lvl in levels]
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(f"ROIPooler: feature levels {levels} are not consecutive")
        self.min_level, self.max_level = levels[0], levels[-1]
        if canonical_box_size <= 0:
            raise ValueError(f"canonical_box_size must be > 0, got {canonical_box_size}")
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def _scale_rois(self, rois: torch.Tensor, level: int) -> torch.Tensor:
        # Box coordinate k (x, y, z) runs along array axis ndim - 1 - k.
        scale = self.scales[level]
        factors = [scale[self.ndim - 1 - k] for k in range(self.ndim)] * 2
        factors = rois.new_tensor([1.0] + factors)
        return rois * factors

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> torch.Tensor:
        """
        Args:
            x: feature maps, finest level first, each (N, C, *spatial).
            box_lists: one Boxes per image, in input coordinates.

        Returns:
            Tensor: (M, C, *output_size), boxes in the order of ``cat(box_lists)``.
        """
        if len(x) != len(self.scales):
            raise ValueError(
                f"ROIPooler built for {len(self.scales)} levels got {len(x)} feature maps"
            )
        if len(box_lists) != x[0].shape[0]:
            raise ValueError(
                f"ROIPooler: {len(box_lists)} box lists for a batch of {x[0].shape[0]} images"
            )
        rois = convert_boxes_to_pooler_format(box_lists)
        num_channels = x[0].shape[1]
        out = x[0].new_zeros((rois.shape[0], num_channels) + self.output_size)
        if rois.shape[0] == 0:
            return out
        if len(x) == 1:
            level_of_box = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
        else:
            level_of_box = assign_boxes_to_levels(
                box_lists,
                self.min_level,
                self.max_level,
                self.canonical_box_size,
                self.canonical_level,
            ).to(rois.device)
        for level, features in enumerate(x):
            inds = torch.nonzero(level_of_box == level, as_tuple=True)[0]
            if inds.numel() == 0:
                continue
            pooled = roi_align(
                features,
                self._scale_rois(rois[inds], level),
                self.output_size,
                spatial_scale=1.0,
                sampling_ratio=self.sampling_ratio,
                aligned=self.aligned,
            )
            out.index_put_((inds,), pooled.to(out.dtype))
        return out
