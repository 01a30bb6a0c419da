"""The interface every det3d backbone implements."""

from abc import ABCMeta, abstractmethod
from typing import Dict, Tuple, Union

from torch import nn

from det3d.layers import ShapeSpec

__all__ = ["Backbone"]


class Backbone(nn.Module, metaclass=ABCMeta):
    """
    Abstract base class of backbones: a network that maps an input batch ``(N, C, *spatial)`` to a
    dict of named feature maps.

    Subclasses set ``self._out_features`` (names), ``self._out_feature_channels`` and
    ``self._out_feature_strides`` (name -> per-axis stride tuple in array order), or override
    :meth:`output_shape`.
    """

    def __init__(self):
        super().__init__()

    @abstractmethod
    def forward(self, x):
        """
        Args:
            x (Tensor): (N, C, *spatial).

        Returns:
            dict[str, Tensor]: feature name -> (N, C_f, *spatial_f).
        """
        pass

    @property
    def size_divisibility(self) -> Union[int, Tuple[int, ...]]:
        """
        The input's spatial sizes must be divisible by this (an int, or a tuple per array axis)
        for the network to work as intended; 0 means any size. ``ImageList.from_tensors`` pads
        to it.
        """
        return 0

    @property
    def padding_constraints(self) -> Dict[str, int]:
        """Further padding requirements (Detectron2's ``square_size``); none by default."""
        return {}

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """
        Turns activation checkpointing on or off (``MODEL.BACKBONE.CHECKPOINT``): in training,
        the backbone keeps only the inputs of its blocks for the backward pass and recomputes
        the rest (see ``det3d.layers.checkpoint_module``); outputs and gradients stay the same.
        Backbones that support it override this; here enabling it raises.
        """
        if enabled:
            raise NotImplementedError(
                f"MODEL.BACKBONE.CHECKPOINT: {type(self).__name__} does not support activation "
                "checkpointing"
            )

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """
        Returns:
            dict[str, ShapeSpec]: channels and per-axis stride (array order) of each output.
        """
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name],
                stride=tuple(self._out_feature_strides[name]),
            )
            for name in self._out_features
        }
