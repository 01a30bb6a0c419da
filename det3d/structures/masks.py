"""
Per-instance binary masks in 2 or 3 spatial dims. Their run-length encoding is in
:mod:`det3d.structures.rle`.
"""

from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from det3d.utils.axes import as_tuple, box_axis_to_array_axis

from .boxes import Boxes

__all__ = ["BitMasks"]

# Voxels converted to float at once in crop_and_resize (64 Mi voxels = 256 MiB of float32).
_CROP_CHUNK_VOXELS = 1 << 26


class BitMasks:
    """
    N binary masks of one image or volume, stored as a bool tensor ``(N, *spatial)`` with
    ``spatial`` = ``(D, H, W)`` or ``(H, W)``.

    Example::

        masks, ids = BitMasks.from_label_volume(labels)      # labels: (D, H, W) int
        boxes = masks.get_bounding_boxes()                   # Boxes (N, 6), [a, b+1) per axis
        targets = masks.crop_and_resize(boxes.tensor, 28)    # (N, 28, 28, 28) float

    Attributes:
        tensor (Tensor): bool (N, *spatial).
    """

    def __init__(self, tensor: Union[torch.Tensor, np.ndarray]):
        if isinstance(tensor, np.ndarray):
            tensor = torch.from_numpy(np.ascontiguousarray(tensor))
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"BitMasks expects a Tensor or np.ndarray, got {type(tensor).__name__}")
        if tensor.dim() not in (3, 4):
            raise ValueError(
                f"BitMasks: tensor must be (N, H, W) or (N, D, H, W), got {tuple(tensor.shape)}"
            )
        self.tensor = tensor.to(torch.bool)

    @property
    def ndim(self) -> int:
        """Number of spatial dims: 2 or 3."""
        return self.tensor.dim() - 1

    @property
    def image_size(self) -> Tuple[int, ...]:
        """Spatial shape ``(D, H, W)`` / ``(H, W)``."""
        return tuple(self.tensor.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to(self, *args: Any, **kwargs: Any) -> "BitMasks":
        return BitMasks(self.tensor.to(*args, **kwargs))

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> "BitMasks":
        """``masks[i]`` (a BitMasks of one mask), slices, bool masks, long index tensors."""
        if isinstance(item, (int, np.integer)):
            return BitMasks(self.tensor[item].unsqueeze(0))
        m = self.tensor[item]
        if m.dim() != self.tensor.dim():
            raise IndexError(f"Indexing BitMasks with {item!r} returned shape {tuple(m.shape)}")
        return BitMasks(m)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.tensor

    def __repr__(self) -> str:
        return f"BitMasks(num_instances={len(self)}, image_size={self.image_size})"

    def nonempty(self) -> torch.Tensor:
        """(N,) bool: True for masks with at least one voxel."""
        return self.tensor.flatten(1).any(dim=1)

    def volume(self) -> torch.Tensor:
        """(N,) int64 number of voxels of each mask."""
        return self.tensor.flatten(1).sum(dim=1)

    def get_bounding_boxes(self) -> Boxes:
        """
        Tight boxes: a mask spanning voxels ``a..b`` along an axis gets ``[a, b+1)`` there.
        Empty masks get an all-zero box.

        Returns:
            Boxes (N, 2*ndim), XYXY / XYZXYZ.
        """
        d = self.ndim
        n = len(self)
        boxes = torch.zeros(n, 2 * d, dtype=torch.float32, device=self.device)
        if n == 0:
            return Boxes(boxes)
        nonempty = self.nonempty()
        for k in range(d):
            axis = box_axis_to_array_axis(k, d) + 1  # +1 for the instance dim
            proj = self.tensor
            # Reduce the other spatial dims, highest first so the remaining indices stay valid.
            for a in sorted((a for a in range(1, d + 1) if a != axis), reverse=True):
                proj = proj.any(dim=a)
            # proj: (N, size along axis)
            size = proj.shape[1]
            first = proj.to(torch.uint8).argmax(dim=1)
            last = size - 1 - proj.flip(1).to(torch.uint8).argmax(dim=1)
            boxes[:, k] = first.float()
            boxes[:, d + k] = (last + 1).float()
        boxes[~nonempty] = 0
        return Boxes(boxes)

    def crop_and_resize(
        self,
        boxes: torch.Tensor,
        mask_size: Union[int, Sequence[int]],
        threshold: Optional[float] = 0.5,
    ) -> torch.Tensor:
        """
        Crops mask ``i`` to ``boxes[i]`` and resamples it to ``mask_size`` with RoIAlign
        (``aligned=True``, adaptive sampling), as Detectron2 builds mask-head targets.

        Args:
            boxes (Tensor): (N, 2*ndim) boxes, one per mask.
            mask_size: int or per-axis sizes (array order).
            threshold: voxels with sampled value >= threshold become 1, others 0 (Detectron2's
                0.5). None returns the interpolated values in [0, 1].

        Returns:
            Tensor: float32 (N, *mask_size), on the masks' device.
        """
        from det3d.layers.roi_align import roi_align  # compiled op; imported only when used

        d = self.ndim
        out_size = as_tuple(mask_size, d, name="mask_size")
        if boxes.dim() != 2 or boxes.shape != (len(self), 2 * d):
            raise ValueError(
                f"crop_and_resize: boxes must be ({len(self)}, {2 * d}) for {len(self)} {d}D "
                f"masks, got {tuple(boxes.shape)}"
            )
        n = len(self)
        if n == 0:
            return torch.zeros((0,) + out_size, dtype=torch.float32, device=self.device)
        boxes = boxes.to(device=self.device, dtype=torch.float32)
        voxels = max(1, int(np.prod(self.image_size)))
        chunk = max(1, _CROP_CHUNK_VOXELS // voxels)
        outputs = []
        for start in range(0, n, chunk):
            masks = self.tensor[start : start + chunk, None].to(torch.float32)
            k = masks.shape[0]
            batch_idx = torch.arange(k, device=self.device, dtype=torch.float32)[:, None]
            rois = torch.cat([batch_idx, boxes[start : start + k]], dim=1)
            outputs.append(
                roi_align(
                    masks, rois, out_size, spatial_scale=1.0, sampling_ratio=0, aligned=True
                ).squeeze(1)
            )
        out = torch.cat(outputs, dim=0)
        if threshold is not None:
            out = (out >= threshold).to(torch.float32)
        return out

    @staticmethod
    def from_label_volume(
        labels: Union[np.ndarray, torch.Tensor], ids: Optional[Sequence[int]] = None
    ) -> Tuple["BitMasks", torch.Tensor]:
        """
        Splits a label volume (0 = background, every other value an instance id) into masks.

        Args:
            labels: int array or tensor of spatial shape ``(D, H, W)`` / ``(H, W)``.
            ids: ids to extract, in this order; default: the sorted nonzero ids present.
                An id absent from ``labels`` gives an empty mask.

        Returns:
            (BitMasks (N, *spatial), ids int64 tensor (N,)).
        """
        if isinstance(labels, np.ndarray):
            labels = torch.from_numpy(np.ascontiguousarray(labels))
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise ValueError(
                f"from_label_volume: labels must be an integer array, got {labels.dtype}"
            )
        if labels.dim() not in (2, 3):
            raise ValueError(
                f"from_label_volume: labels must be (H, W) or (D, H, W), got {tuple(labels.shape)}"
            )
        if ids is None:
            ids_t = torch.unique(labels)
            ids_t = ids_t[ids_t != 0]
        else:
            ids_t = torch.as_tensor(ids)
        ids_t = ids_t.to(device=labels.device, dtype=torch.int64).reshape(-1)
        view = (-1,) + (1,) * labels.dim()
        masks = (
            labels.to(torch.int64)[None] == ids_t.view(view)
            if len(ids_t)
            else (torch.zeros((0,) + tuple(labels.shape), dtype=torch.bool, device=labels.device))
        )
        return BitMasks(masks), ids_t

    def to_label_volume(self, ids: Optional[Sequence[int]] = None) -> torch.Tensor:
        """
        Inverse of :meth:`from_label_volume`. Masks are written in order, so where masks overlap
        the later one wins.

        Args:
            ids: id of each mask; default ``1..N``.

        Returns:
            int32 tensor of spatial shape, 0 = background.
        """
        n = len(self)
        ids_t = torch.arange(1, n + 1) if ids is None else torch.as_tensor(ids).reshape(-1)
        if len(ids_t) != n:
            raise ValueError(f"to_label_volume: {len(ids_t)} ids for {n} masks")
        out = torch.zeros(self.image_size, dtype=torch.int32, device=self.device)
        for m, i in zip(self.tensor, ids_t.tolist()):
            out[m] = i
        return out

    @staticmethod
    def cat(bitmasks_list: List["BitMasks"]) -> "BitMasks":
        """Concatenates BitMasks of the same image_size."""
        if len(bitmasks_list) == 0:
            raise ValueError("BitMasks.cat needs at least one BitMasks")
        if not all(isinstance(b, BitMasks) for b in bitmasks_list):
            raise TypeError("BitMasks.cat: every element must be a BitMasks")
        sizes = {b.image_size for b in bitmasks_list}
        if len(sizes) != 1:
            raise ValueError(f"BitMasks.cat: different image sizes {sorted(sizes)}")
        return BitMasks(torch.cat([b.tensor for b in bitmasks_list], dim=0))
