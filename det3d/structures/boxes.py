"""
Axis-aligned boxes in 2 or 3 spatial dims.

A box is ``(x0, y0, x1, y1)`` (2D) or ``(x0, y0, z0, x1, y1, z1)`` (3D): absolute, continuous voxel
coordinates, corners first, then ends. Voxel ``i`` covers ``[i, i+1)``; x runs along W, y along H,
z along D, i.e. box coordinate ``k`` runs along array axis ``ndim - 1 - k``
(see :mod:`det3d.utils.axes`). Volumes are plain products of the sides (no ``+1``).
"""

from enum import IntEnum, unique
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from det3d.utils.axes import array_axis_to_box_axis, array_shape_to_box_order

__all__ = [
    "Boxes",
    "BoxMode",
    "pairwise_intersection",
    "pairwise_iou",
    "pairwise_ioa",
    "matched_boxlist_iou",
]

# (y0, x0, y1, x1, z0, z1) <-> (x0, y0, z0, x1, y1, z1); the permutation is its own inverse.
_YXYXZZ_PERM = [1, 0, 4, 3, 2, 5]

_RawBoxType = Union[List[float], Tuple[float, ...], torch.Tensor, np.ndarray]


@unique
class BoxMode(IntEnum):
    """
    Box layouts. The 2D values are Detectron2's, so 2D records written for Detectron2 read the same.

    * ``XYXY_ABS`` (0): ``(x0, y0, x1, y1)`` in voxels.
    * ``XYWH_ABS`` (1): ``(x0, y0, w, h)``.
    * ``XYXY_REL`` (2): ``XYXY_ABS`` divided by ``(W, H)``, i.e. in ``[0, 1]``.
    * ``XYZXYZ_ABS`` (10): ``(x0, y0, z0, x1, y1, z1)``: det3d's own layout.
    * ``XYZWHD_ABS`` (11): ``(x0, y0, z0, w, h, d)``.
    * ``XYZXYZ_REL`` (12): ``XYZXYZ_ABS`` divided by ``(W, H, D)``.
    * ``YXYXZZ_ABS`` (13): ``(y0, x0, y1, x1, z0, z1)``: the layout of medical detection toolkits
      (e.g. nnDetection / medicaldetectiontoolkit), same continuous convention.
    """

    XYXY_ABS = 0
    XYWH_ABS = 1
    XYXY_REL = 2
    XYZXYZ_ABS = 10
    XYZWHD_ABS = 11
    XYZXYZ_REL = 12
    YXYXZZ_ABS = 13

    @property
    def spatial_dims(self) -> int:
        """2 for the 2D modes, 3 for the 3D ones."""
        return 2 if self.value < 10 else 3

    @staticmethod
    def convert(
        box: _RawBoxType,
        from_mode: "BoxMode",
        to_mode: "BoxMode",
        image_shape: Optional[Sequence[int]] = None,
        *,
        shape: Optional[Sequence[int]] = None,
    ) -> _RawBoxType:
        """
        Converts boxes from one layout to another.

        Args:
            box: one box (list, tuple, 1-D array/tensor of length 4 or 6) or ``(N, k)`` boxes
                (nested list, np.ndarray, Tensor).
            from_mode, to_mode: two modes of the same dimensionality.
            image_shape: spatial array shape ``(H, W)`` / ``(D, H, W)``; needed by the REL modes.
            shape: alias of ``image_shape``.

        Returns:
            the converted boxes, of the same type as ``box`` (and shape). Arrays and tensors keep
            a floating dtype; integer inputs come back as float64 (numpy) / float32 (torch).
        """
        if shape is not None:
            if image_shape is not None:
                raise ValueError("BoxMode.convert: give image_shape or shape, not both")
            image_shape = shape
        from_mode, to_mode = BoxMode(from_mode), BoxMode(to_mode)
        if from_mode == to_mode:
            return box
        ndim = from_mode.spatial_dims
        if to_mode.spatial_dims != ndim:
            raise ValueError(
                f"BoxMode.convert cannot convert {from_mode.name} ({ndim}D) to "
                f"{to_mode.name} ({to_mode.spatial_dims}D)"
            )

        if isinstance(box, torch.Tensor):
            arr = box if box.is_floating_point() else box.float()
        else:
            arr = np.asarray(box)
            if not np.issubdtype(arr.dtype, np.floating):
                arr = arr.astype(np.float64)
            arr = torch.from_numpy(arr)
        single = arr.dim() == 1
        if single:
            arr = arr.reshape(1, -1)
        if arr.dim() != 2 or arr.shape[1] != 2 * ndim:
            raise ValueError(
                f"BoxMode.convert: boxes in {from_mode.name} must have shape ({2 * ndim},) or "
                f"(N, {2 * ndim}), got {tuple(arr.shape)}"
            )

        sizes = None
        if BoxMode._is_rel(from_mode) or BoxMode._is_rel(to_mode):
            if image_shape is None:
                raise ValueError(
                    f"BoxMode.convert {from_mode.name} -> {to_mode.name} needs image_shape "
                    f"(the spatial array shape)"
                )
            if len(image_shape) != ndim:
                raise ValueError(
                    f"BoxMode.convert: image_shape={tuple(image_shape)} must have {ndim} entries "
                    f"(array order) for {from_mode.name} -> {to_mode.name}"
                )
            wh = array_shape_to_box_order(image_shape)  # (W, H[, D])
            sizes = torch.tensor(wh, dtype=arr.dtype, device=arr.device).repeat(2)

        corners = BoxMode._to_corners(arr, from_mode, ndim, sizes)
        out = BoxMode._from_corners(corners, to_mode, ndim, sizes)

        if single:
            out = out.reshape(-1)
        if isinstance(box, torch.Tensor):
            return out
        if isinstance(box, tuple):
            return tuple(out.tolist())
        if isinstance(box, list):
            return out.tolist()
        return out.numpy()

    @staticmethod
    def _is_rel(mode: "BoxMode") -> bool:
        return mode in (BoxMode.XYXY_REL, BoxMode.XYZXYZ_REL)

    @staticmethod
    def _to_corners(arr: torch.Tensor, mode: "BoxMode", ndim: int, sizes) -> torch.Tensor:
        if mode in (BoxMode.XYXY_ABS, BoxMode.XYZXYZ_ABS):
            return arr.clone()
        if mode in (BoxMode.XYWH_ABS, BoxMode.XYZWHD_ABS):
            return torch.cat([arr[:, :ndim], arr[:, :ndim] + arr[:, ndim:]], dim=1)
        if BoxMode._is_rel(mode):
            return arr * sizes
        if mode == BoxMode.YXYXZZ_ABS:
            return arr[:, _YXYXZZ_PERM]
        raise NotImplementedError(f"BoxMode {mode.name} is not supported")

    @staticmethod
    def _from_corners(arr: torch.Tensor, mode: "BoxMode", ndim: int, sizes) -> torch.Tensor:
        if mode in (BoxMode.XYXY_ABS, BoxMode.XYZXYZ_ABS):
            return arr
        if mode in (BoxMode.XYWH_ABS, BoxMode.XYZWHD_ABS):
            return torch.cat([arr[:, :ndim], arr[:, ndim:] - arr[:, :ndim]], dim=1)
        if BoxMode._is_rel(mode):
            return arr / sizes
        if mode == BoxMode.YXYXZZ_ABS:
            return arr[:, _YXYXZZ_PERM]
        raise NotImplementedError(f"BoxMode {mode.name} is not supported")


class Boxes:
    """
    N boxes in ``ndim`` = 2 or 3 spatial dims, stored as ``tensor`` of shape ``(N, 2*ndim)``
    (``XYXY_ABS`` / ``XYZXYZ_ABS``). Detectron2's ``Boxes`` API; methods that take a size take
    the spatial array shape ``(H, W)`` / ``(D, H, W)``.

    Example::

        boxes = Boxes(torch.tensor([[0.0, 0, 0, 4, 4, 2]]))   # one 4x4x2 box
        boxes.volume()                                        # tensor([32.])
        boxes.clip((8, 16, 16))                               # D, H, W
        empty = Boxes(torch.zeros(0, 6))

    Attributes:
        tensor (Tensor): float (N, 2*ndim). Floating dtypes are kept (half under AMP); other
            dtypes are converted to float32.
    """

    def __init__(self, tensor: Union[torch.Tensor, np.ndarray, list], ndim: Optional[int] = None):
        """
        Args:
            tensor: (N, 4) or (N, 6) boxes.
            ndim: needed only to build an empty Boxes from a tensor that is not (0, 2*ndim),
                e.g. ``Boxes(torch.zeros(0), ndim=3)``; otherwise checked against the width.
        """
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(np.asarray(tensor), dtype=torch.float32)
        elif not tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        if tensor.numel() == 0 and tensor.dim() != 2:
            if ndim is None:
                raise ValueError(
                    f"Boxes: cannot infer ndim from an empty tensor of shape "
                    f"{tuple(tensor.shape)}; pass a (0, 4) / (0, 6) tensor or ndim="
                )
            tensor = tensor.reshape(0, 2 * ndim)
        if tensor.dim() != 2 or tensor.shape[-1] not in (4, 6):
            raise ValueError(f"Boxes: tensor must be (N, 4) or (N, 6), got {tuple(tensor.shape)}")
        if ndim is not None and tensor.shape[-1] != 2 * ndim:
            raise ValueError(f"Boxes: tensor of shape {tuple(tensor.shape)} is not {ndim}D")
        self.tensor = tensor

    @property
    def ndim(self) -> int:
        """Number of spatial dims: 2 or 3."""
        return self.tensor.shape[-1] // 2

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def clone(self) -> "Boxes":
        return Boxes(self.tensor.clone())

    def to(self, *args: Any, **kwargs: Any) -> "Boxes":
        return Boxes(self.tensor.to(*args, **kwargs))

    def sizes(self) -> torch.Tensor:
        """(N, ndim) side lengths in box-coordinate order ``(w, h[, d])``."""
        d = self.ndim
        return self.tensor[:, d:] - self.tensor[:, :d]

    def volume(self) -> torch.Tensor:
        """(N,) product of the sides (area in 2D). Boxes with a negative side give a sign-flipped
        product; use :meth:`nonempty` to filter them first."""
        return self.sizes().prod(dim=1)

    def area(self) -> torch.Tensor:
        """Alias of :meth:`volume`, for Detectron2 code."""
        return self.volume()

    def clip(self, box_size: Sequence[int]) -> None:
        """
        Clips the boxes in place: x to ``[0, W]``, y to ``[0, H]``, z to ``[0, D]``.

        Args:
            box_size: spatial array shape ``(H, W)`` / ``(D, H, W)``.
        """
        if len(box_size) != self.ndim:
            raise ValueError(
                f"Boxes.clip: box_size={tuple(box_size)} must have {self.ndim} entries "
                f"(array order)"
            )
        if not torch.isfinite(self.tensor).all():
            raise ValueError("Boxes.clip: box tensor contains NaN or Inf")
        d = self.ndim
        limits = array_shape_to_box_order(box_size)
        for k in range(d):
            hi = float(limits[k])
            self.tensor[:, k].clamp_(min=0, max=hi)
            self.tensor[:, d + k].clamp_(min=0, max=hi)

    def flipped(self, axes: Sequence[int], box_size: Sequence[int]) -> "Boxes":
        """
        The boxes of a volume of spatial array shape ``box_size`` flipped along the array axes
        ``axes`` (0 = D in 3D, as ``FlipTransform``): on each, ``[a, b)`` becomes
        ``[size - b, size - a)``. Flipping twice gives the boxes back.
        """
        if len(box_size) != self.ndim:
            raise ValueError(
                f"Boxes.flipped: box_size={tuple(box_size)} must have {self.ndim} entries"
            )
        d = self.ndim
        t = self.tensor.clone()
        for axis in axes:
            k = array_axis_to_box_axis(axis, d)
            size = float(box_size[axis])
            t[:, k], t[:, d + k] = size - self.tensor[:, d + k], size - self.tensor[:, k]
        return Boxes(t)

    def transposed_xy(self) -> "Boxes":
        """
        The boxes of the volume with its last two array axes (y and x) swapped, as
        ``image.transpose(-1, -2)`` swaps them: each box's x and y extents trade places.
        Transposing twice gives the boxes back.
        """
        d = self.ndim
        order = [1, 0, *range(2, d)]
        return Boxes(self.tensor[:, order + [d + k for k in order]])

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """(N,) bool: True where every side is larger than ``threshold``."""
        return (self.sizes() > threshold).all(dim=1)

    def inside_box(self, box_size: Sequence[int], boundary_threshold: int = 0) -> torch.Tensor:
        """
        (N,) bool: True for boxes inside the volume of spatial array shape ``box_size``
        (``(H, W)`` / ``(D, H, W)``), allowing ``boundary_threshold`` voxels beyond each face.
        """
        if len(box_size) != self.ndim:
            raise ValueError(
                f"Boxes.inside_box: box_size={tuple(box_size)} must have {self.ndim} entries"
            )
        d = self.ndim
        limits = torch.tensor(
            array_shape_to_box_order(box_size), dtype=self.tensor.dtype, device=self.device
        )
        t = boundary_threshold
        return (self.tensor[:, :d] >= -t).all(dim=1) & (self.tensor[:, d:] < limits + t).all(dim=1)

    def centers(self) -> torch.Tensor:
        """(N, ndim) box centers ``(cx, cy[, cz])``."""
        d = self.ndim
        return (self.tensor[:, :d] + self.tensor[:, d:]) / 2

    def get_centers(self) -> torch.Tensor:
        """Alias of :meth:`centers`, for Detectron2 code."""
        return self.centers()

    def scale(self, *factors: float) -> None:
        """
        Scales the coordinates in place: ``scale(s)`` scales every axis by ``s``,
        ``scale(sx, sy[, sz])`` each box coordinate axis by its factor.
        """
        d = self.ndim
        if len(factors) == 1:
            factors = factors * d
        if len(factors) != d:
            raise ValueError(
                f"Boxes.scale: expected 1 or {d} factors (sx, sy[, sz]), got {factors}"
            )
        for k, f in enumerate(factors):
            self.tensor[:, k] *= f
            self.tensor[:, d + k] *= f

    def __getitem__(self, item) -> "Boxes":
        """
        ``boxes[i]`` (a Boxes of one box), ``boxes[2:10]``, ``boxes[bool_mask]``,
        ``boxes[long_index_tensor]``. The result may share storage with this Boxes.
        """
        if isinstance(item, (int, np.integer)):
            return Boxes(self.tensor[item].view(1, -1))
        b = self.tensor[item]
        if b.dim() != 2:
            raise IndexError(f"Indexing Boxes with {item!r} did not give a 2D tensor")
        return Boxes(b)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __repr__(self) -> str:
        return f"Boxes({self.ndim}D, {str(self.tensor)})"

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Yields each box as a (2*ndim,) tensor."""
        yield from self.tensor

    @classmethod
    def cat(cls, boxes_list: List["Boxes"], ndim: Optional[int] = None) -> "Boxes":
        """
        Concatenates Boxes of the same ndim. An empty list needs ``ndim`` to know the width.
        """
        if not isinstance(boxes_list, (list, tuple)):
            raise TypeError(f"Boxes.cat expects a list of Boxes, got {type(boxes_list).__name__}")
        if len(boxes_list) == 0:
            if ndim is None:
                raise ValueError("Boxes.cat([]) needs ndim= to build an empty Boxes")
            return cls(torch.empty(0, 2 * ndim))
        if not all(isinstance(b, Boxes) for b in boxes_list):
            raise TypeError("Boxes.cat: every element must be a Boxes")
        dims = {b.ndim for b in boxes_list}
        if len(dims) != 1 or (ndim is not None and dims != {ndim}):
            raise ValueError(f"Boxes.cat: mixed spatial dims {sorted(dims)}")
        return cls(torch.cat([b.tensor for b in boxes_list], dim=0))


def _box_tensor(boxes: Union[Boxes, torch.Tensor], name: str) -> torch.Tensor:
    t = boxes.tensor if isinstance(boxes, Boxes) else boxes
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[-1] not in (4, 6):
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be Boxes or an (N, 4) / (N, 6) tensor, got {shape}")
    t = t.float()  # IoU in float32 even for half boxes (MONAI's rule): half overflows on volumes
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf coordinates")
    return t


def _pair(boxes1, boxes2) -> Tuple[torch.Tensor, torch.Tensor, int]:
    a = _box_tensor(boxes1, "boxes1")
    b = _box_tensor(boxes2, "boxes2")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"boxes1 is {a.shape[-1] // 2}D and boxes2 is {b.shape[-1] // 2}D; they must match"
        )
    return a, b, a.shape[-1] // 2


def _intersection(a: torch.Tensor, b: torch.Tensor, d: int) -> torch.Tensor:
    lo = torch.max(a[:, None, :d], b[None, :, :d])
    hi = torch.min(a[:, None, d:], b[None, :, d:])
    return (hi - lo).clamp(min=0).prod(dim=2)


def _volume(t: torch.Tensor, d: int) -> torch.Tensor:
    return (t[:, d:] - t[:, :d]).prod(dim=1)


def pairwise_intersection(
    boxes1: Union[Boxes, torch.Tensor], boxes2: Union[Boxes, torch.Tensor]
) -> torch.Tensor:
    """
    Args:
        boxes1, boxes2: N and M boxes of the same ndim (Boxes or tensors).

    Returns:
        (N, M) float32 intersection volumes.
    """
    a, b, d = _pair(boxes1, boxes2)
    return _intersection(a, b, d)


def pairwise_iou(
    boxes1: Union[Boxes, torch.Tensor], boxes2: Union[Boxes, torch.Tensor]
) -> torch.Tensor:
    """
    Returns:
        (N, M) float32 IoU of every pair, computed in float32. 0 where boxes do not overlap.
        Raises ValueError if either argument holds NaN or Inf.
    """
    a, b, d = _pair(boxes1, boxes2)
    inter = _intersection(a, b, d)
    union = _volume(a, d)[:, None] + _volume(b, d)[None, :] - inter
    return torch.where(inter > 0, inter / union, torch.zeros(1, dtype=inter.dtype, device=a.device))


def pairwise_ioa(
    boxes1: Union[Boxes, torch.Tensor], boxes2: Union[Boxes, torch.Tensor]
) -> torch.Tensor:
    """
    Returns:
        (N, M) float32 intersection over the volume of boxes2 ("IoA"), 0 where no overlap.
    """
    a, b, d = _pair(boxes1, boxes2)
    inter = _intersection(a, b, d)
    vol2 = _volume(b, d)
    return torch.where(
        inter > 0, inter / vol2[None, :], torch.zeros(1, dtype=inter.dtype, device=a.device)
    )


def matched_boxlist_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """
    Returns:
        (N,) float32 IoU of ``boxes1[i]`` with ``boxes2[i]``.
    """
    a, b, d = _pair(boxes1, boxes2)
    if len(a) != len(b):
        raise ValueError(f"matched_boxlist_iou: {len(a)} boxes1 vs {len(b)} boxes2; must be equal")
    inter = (torch.min(a[:, d:], b[:, d:]) - torch.max(a[:, :d], b[:, :d])).clamp(min=0).prod(dim=1)
    union = _volume(a, d) + _volume(b, d) - inter
    return torch.where(inter > 0, inter / union, torch.zeros(1, dtype=inter.dtype, device=a.device))
