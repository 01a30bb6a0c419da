"""RoIAlign for 2D (N, C, H, W) and 3D (N, C, D, H, W) feature maps, backed by det3d._C."""

from typing import Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .nms import _ops

__all__ = ["roi_align", "ROIAlign"]


def _output_size_tuple(output_size: Union[int, Sequence[int]], ndim: int) -> Tuple[int, ...]:
    if isinstance(output_size, int):
        return (output_size,) * ndim
    output_size = tuple(int(s) for s in output_size)
    if len(output_size) != ndim:
        raise ValueError(
            f"output_size must be an int or have {ndim} entries (array axis order), "
            f"got {output_size}"
        )
    return output_size


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: Union[int, Sequence[int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """
    Detectron2's RoIAlign, in 2D or 3D.

    Args:
        input (Tensor): (N, C, H, W) or (N, C, D, H, W).
        rois (Tensor): (K, 1 + 2*ndim): batch index, then the box ``(x0, y0[, z0], x1, y1[, z1])``
            in the coordinates of the image the feature map was computed from.
        output_size (int or tuple): per array axis, ``(D, H, W)`` or ``(H, W)``.
        spatial_scale (float): feature map size / image size (e.g. 1/stride).
        sampling_ratio (int): samples per bin along each axis; 0 = ceil(roi size / output size)
            per axis.
        aligned (bool): shift the box by -0.5 voxel so that sample points are voxel centres
            (Detectron2's ``aligned=True``); False is the legacy behaviour.

    Returns:
        Tensor: (K, C, *output_size), the average of the interpolated samples in every bin, in
        the dtype of ``input``. Under autocast, and for bfloat16 input (float16 on CPU), the
        samples are computed in float32 (as torchvision's autocast kernel does).
    """
    if not isinstance(input, Tensor) or input.dim() not in (4, 5):
        shape = tuple(input.shape) if isinstance(input, Tensor) else type(input)
        raise ValueError(f"input must be (N, C, H, W) or (N, C, D, H, W), got {shape}")
    ndim = input.dim() - 2
    if not isinstance(rois, Tensor) or rois.dim() != 2 or rois.shape[1] != 1 + 2 * ndim:
        shape = tuple(rois.shape) if isinstance(rois, Tensor) else type(rois)
        raise ValueError(
            f"rois must have shape (K, {1 + 2 * ndim}) for a {ndim}D input, got {shape}"
        )
    if rois.device != input.device:
        raise ValueError(
            f"rois ({rois.device}) and input ({input.device}) must be on the same device"
        )
    if not torch.isfinite(rois).all():
        raise ValueError("rois contains NaN or Inf coordinates")
    if spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be > 0, got {spatial_scale}")
    output_size = _output_size_tuple(output_size, ndim)
    dtype = input.dtype
    reduced = dtype == torch.bfloat16 or (dtype == torch.float16 and input.device.type == "cpu")
    if reduced:
        # the kernels have no bfloat16 (and on CPU no float16) path: interpolate in float32, as
        # under autocast, and hand back the caller's dtype (the casts are differentiable)
        input = input.float()
    # boxes in the dtype the op runs in: float32 under autocast (keeps them exact), else input's
    autocast = torch.is_autocast_enabled(input.device.type)
    rois = rois.float() if autocast else rois.to(dtype=input.dtype)
    # autograd, fake (tracing) and autocast kernels are registered with the op (op_registrations)
    out = _ops().roi_align(
        input, rois, float(spatial_scale), list(output_size), int(sampling_ratio), bool(aligned)
    )
    return out.to(dtype) if reduced else out


class ROIAlign(nn.Module):
    """:func:`roi_align` as a module; see there for the arguments."""

    def __init__(
        self,
        output_size: Union[int, Sequence[int]],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = True,
    ):
        super().__init__()
        self.output_size = output_size if isinstance(output_size, int) else tuple(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned})"
        )
