from dataclasses import dataclass
from typing import Optional, Tuple

from det3d.utils.axes import as_tuple

__all__ = ["ShapeSpec", "as_tuple"]


@dataclass
class ShapeSpec:
    """
    Shape of a feature map, without the batch and spatial sizes (as in Detectron2).

    Attributes:
        channels: number of channels.
        stride: downsampling factor of the map relative to the input, one int per spatial axis in
            array order ``(D, H, W)`` / ``(H, W)``. Use :func:`as_tuple` to build it from an int.
    """

    channels: Optional[int] = None
    stride: Optional[Tuple[int, ...]] = None
