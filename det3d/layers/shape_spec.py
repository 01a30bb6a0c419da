from dataclasses import dataclass
from typing import Optional, Tuple

from det3d.utils.axes import as_tuple

__all__ = ["ShapeSpec", "as_tuple"]


@dataclass
class ShapeSpec:
    """
    Shape of a feature map, without the batch size (as in Detectron2).

    Attributes:
        channels: number of channels.
        stride: downsampling factor of the map relative to the input, one int per spatial axis in
            array order ``(D, H, W)`` / ``(H, W)``. Use :func:`as_tuple` to build it from an int.
        size: spatial size per axis (array order) where it is fixed, e.g. the pooled RoI features
            a pooler gives a head (Detectron2's ``height``/``width``): the head takes it from
            here, so it cannot disagree with its pooler. None for maps of any size.
    """

    channels: Optional[int] = None
    stride: Optional[Tuple[int, ...]] = None
    size: Optional[Tuple[int, ...]] = None
