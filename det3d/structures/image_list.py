"""A batch of images or volumes of different sizes, padded to one tensor."""

from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from det3d.utils.axes import as_tuple

__all__ = ["ImageList"]


class ImageList:
    """
    Images (2D) or volumes (3D) of possibly different spatial sizes, stored as one padded tensor
    ``(N, C, *spatial)`` plus the size of each before padding. Padding is at the end of every
    spatial axis, so voxel coordinates are the same in the padded and the original image.

    Attributes:
        tensor (Tensor): (N, C, D, H, W) or (N, C, H, W).
        image_sizes (list[tuple[int, ...]]): spatial shape of each image before padding,
            ``(D, H, W)`` / ``(H, W)``.
    """

    def __init__(self, tensor: torch.Tensor, image_sizes: List[Tuple[int, ...]]):
        if tensor.dim() < 3:
            raise ValueError(
                f"ImageList: tensor must be (N, C, *spatial), got {tuple(tensor.shape)}"
            )
        if len(image_sizes) != tensor.shape[0]:
            raise ValueError(
                f"ImageList: {len(image_sizes)} image_sizes for a batch of {tensor.shape[0]}"
            )
        self.tensor = tensor
        self.image_sizes = [tuple(int(s) for s in size) for size in image_sizes]

    @property
    def ndim(self) -> int:
        """Number of spatial dims."""
        return self.tensor.dim() - 2

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> torch.Tensor:
        """The ``idx``-th image without its padding: (C, *image_sizes[idx]). A view."""
        size = self.image_sizes[idx]
        return self.tensor[(idx, Ellipsis) + tuple(slice(0, s) for s in size)]

    @torch.jit.unused
    def to(self, *args: Any, **kwargs: Any) -> "ImageList":
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @staticmethod
    def from_tensors(
        tensors: List[torch.Tensor],
        size_divisibility: Union[int, Sequence[int]] = 0,
        pad_value: float = 0.0,
        padding_constraints: Optional[dict] = None,
    ) -> "ImageList":
        """
        Args:
            tensors: images ``(C, *spatial)``, all with the same C and number of spatial dims.
            size_divisibility: int or one int per spatial axis (array order). Each padded axis is
                a multiple of it; 0 or 1 means no constraint on that axis.
            pad_value: value of the padded voxels.
            padding_constraints: optional dict as in Detectron2 / Backbone.padding_constraints:
                ``"size_divisiblity"`` (sic, Detectron2's key) or ``"size_divisibility"``
                overrides ``size_divisibility``; ``"square_size"`` (> 0) pads every axis to that
                size.

        Returns:
            ImageList of tensor (N, C, *max_padded_spatial).
        """
        if len(tensors) == 0:
            raise ValueError("ImageList.from_tensors: got an empty list")
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"ImageList.from_tensors: tensors[{i}] is {type(t).__name__}")
        first = tensors[0]
        if first.dim() < 2:
            raise ValueError(
                f"ImageList.from_tensors: tensors[0] must be (C, *spatial), "
                f"got {tuple(first.shape)}"
            )
        for i, t in enumerate(tensors):
            if t.dim() != first.dim():
                raise ValueError(
                    f"ImageList.from_tensors: tensors[{i}] has shape {tuple(t.shape)} but "
                    f"tensors[0] has {tuple(first.shape)}: different number of dims"
                )
            if t.shape[0] != first.shape[0]:
                raise ValueError(
                    f"ImageList.from_tensors: tensors[{i}] has {t.shape[0]} channels, "
                    f"tensors[0] has {first.shape[0]}"
                )
        ndim = first.dim() - 1
        square_size = 0
        if padding_constraints is not None:
            square_size = padding_constraints.get("square_size", 0)
            for key in ("size_divisiblity", "size_divisibility"):
                if key in padding_constraints:
                    size_divisibility = padding_constraints[key]
        divisibility = as_tuple(size_divisibility, ndim, name="size_divisibility")

        image_sizes = [tuple(t.shape[1:]) for t in tensors]
        max_size = [max(s[a] for s in image_sizes) for a in range(ndim)]
        if square_size > 0:
            max_size = [max(m, square_size) for m in max_size]
        for a, div in enumerate(divisibility):
            if div > 1:
                max_size[a] = (max_size[a] + div - 1) // div * div

        if len(tensors) == 1:
            # A single image that needs no padding is used as is (a view, no copy): common at
            # inference on whole volumes, where a copy would double peak memory.
            pad = []
            for a in reversed(range(ndim)):
                pad += [0, max_size[a] - image_sizes[0][a]]
            if any(pad):
                batched = F.pad(tensors[0], pad, value=pad_value).unsqueeze(0)
            else:
                batched = tensors[0].unsqueeze(0)
        else:
            batched = first.new_full((len(tensors), first.shape[0], *max_size), pad_value)
            for i, t in enumerate(tensors):
                batched[(i, Ellipsis) + tuple(slice(0, s) for s in t.shape[1:])].copy_(t)
        return ImageList(batched.contiguous(), image_sizes)
