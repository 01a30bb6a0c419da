"""Box heads: pooled RoI features -> one feature vector per RoI."""

from typing import List, Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import numpy as np
import torch
from torch import nn

from det3d.config import configurable
from det3d.layers import ShapeSpec, conv_norm_relu_stack
from det3d.utils.axes import as_tuple, per_axis

from ..registries import ROI_BOX_HEAD_REGISTRY

__all__ = ["FastRCNNConvFCHead3D", "build_box_head", "ROI_BOX_HEAD_REGISTRY"]


@ROI_BOX_HEAD_REGISTRY.register()
class FastRCNNConvFCHead3D(nn.Sequential):
    """
    ``NUM_CONV`` 3x3(x3) convs then ``NUM_FC`` fully connected layers, all with ReLU. The output
    is always flat: ``(M, output_shape.channels)`` (when ``NUM_FC`` is 0 it is the flattened conv
    feature block), so any predictor can take it as a vector.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        pooler_resolution: Optional[Sequence[int]] = None,
        conv_dims: List[int],
        fc_dims: List[int],
        conv_norm: str = "",
        ndim: int = 3,
    ):
        """
        Args:
            input_shape: channels of the pooled features, and their size per axis (``size``,
                array order) as the pooler gives them.
            pooler_resolution: the pooled size, for a head built without ``input_shape.size``;
                given with it, it must agree.
            conv_dims: output channels of each conv layer.
            fc_dims: output size of each fc layer.
            conv_norm: normalisation after each conv (see ``get_norm``).
            ndim: number of spatial dims.
        """
        super().__init__()
        if len(conv_dims) + len(fc_dims) == 0:
            raise ValueError("FastRCNNConvFCHead3D needs at least one conv or fc layer")
        resolution = _pooled_size(input_shape, pooler_resolution, ndim)
        channels = input_shape.channels
        for k, conv in enumerate(conv_norm_relu_stack(ndim, channels, conv_dims, conv_norm)):
            self.add_module(f"conv{k + 1}", conv)
            weight_init.c2_msra_fill(conv)
            channels = conv.out_channels
        size = channels * int(np.prod(resolution))
        if fc_dims:
            self.add_module("flatten", nn.Flatten())
        for k, fc_dim in enumerate(fc_dims):
            fc = nn.Linear(size, fc_dim)
            self.add_module(f"fc{k + 1}", fc)
            self.add_module(f"fc_relu{k + 1}", nn.ReLU())
            weight_init.c2_xavier_fill(fc)
            size = fc_dim
        self._output_size = size

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        num_conv = cfg.MODEL.ROI_BOX_HEAD.NUM_CONV
        num_fc = cfg.MODEL.ROI_BOX_HEAD.NUM_FC
        return {
            "input_shape": input_shape,
            # the pooler's size travels in input_shape.size; the config only for a head built alone
            "pooler_resolution": None
            if input_shape.size is not None
            else per_axis(
                cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION,
                cfg.MODEL.SPATIAL_DIMS,
                "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
            ),
            "conv_dims": [cfg.MODEL.ROI_BOX_HEAD.CONV_DIM] * num_conv,
            "fc_dims": [cfg.MODEL.ROI_BOX_HEAD.FC_DIM] * num_fc,
            "conv_norm": cfg.MODEL.ROI_BOX_HEAD.NORM,
            "ndim": cfg.MODEL.SPATIAL_DIMS,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (M, C, *pooler_resolution)

        Returns:
            Tensor: (M, output_shape.channels)
        """
        for layer in self:
            x = layer(x)
        return torch.flatten(x, start_dim=1)

    @property
    def output_shape(self) -> ShapeSpec:
        return ShapeSpec(channels=self._output_size)


def _pooled_size(input_shape: ShapeSpec, pooler_resolution, ndim: int) -> Tuple[int, ...]:
    """The pooled size a box head sees: ``input_shape.size``, else ``pooler_resolution``."""
    given = as_tuple(pooler_resolution, ndim) if pooler_resolution is not None else None
    if input_shape.size is None:
        if given is None:
            raise ValueError("FastRCNNConvFCHead3D: give input_shape.size or pooler_resolution")
        return given
    size = as_tuple(input_shape.size, ndim)
    if given is not None and given != size:
        raise ValueError(
            f"FastRCNNConvFCHead3D: pooler_resolution {given} disagrees with the pooled size "
            f"{size} of input_shape"
        )
    return size


def build_box_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """Builds the box head named by ``cfg.MODEL.ROI_BOX_HEAD.NAME``."""
    return ROI_BOX_HEAD_REGISTRY.get(cfg.MODEL.ROI_BOX_HEAD.NAME)(cfg, input_shape)
