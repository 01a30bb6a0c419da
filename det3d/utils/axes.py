"""
Axis-order helpers.

det3d stores arrays in array-axis order ``(D, H, W)`` (3D) / ``(H, W)`` (2D) and boxes in
box-coordinate order ``(x, y[, z])``. Box coordinate ``k`` (x=0, y=1, z=2) runs along array axis
``ndim - 1 - k``. Every conversion between the two orders goes through this module so that the
reversal is written once.
"""

from typing import Any, Sequence, Tuple, TypeVar, Union

__all__ = [
    "as_tuple",
    "per_axis",
    "box_axis_to_array_axis",
    "array_axis_to_box_axis",
    "array_shape_to_box_order",
    "box_order_to_array_shape",
    "check_spatial_axes",
]

T = TypeVar("T")


def as_tuple(x: Union[T, Sequence[T]], ndim: int, name: str = "value") -> Tuple[T, ...]:
    """
    Broadcasts a scalar to a tuple of length ``ndim``, or checks that a sequence has that length.

    Args:
        x: a scalar (int, float, ...) or a sequence (list, tuple, 1-D tensor/array) of length ndim.
        ndim: the wanted length.
        name: how to call ``x`` in the error message.

    Returns:
        tuple of length ``ndim``.
    """
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name}={x!r}: expected a number or a sequence of {ndim} numbers")
    if hasattr(x, "tolist") and not isinstance(x, (list, tuple)):
        x = x.tolist()  # numpy / torch scalars and 1-D arrays
    if isinstance(x, (list, tuple)):
        if len(x) != ndim:
            raise ValueError(
                f"{name}={list(x)!r} has length {len(x)}, expected {ndim} (one per axis)"
            )
        return tuple(x)
    return (x,) * ndim


def per_axis(value: Union[T, Sequence[T]], ndim: int, name: str = "value") -> Tuple[T, ...]:
    """
    A per-axis config value as a tuple in array order: an int is broadcast, a list must have one
    entry per axis. In 2D a list of 3 (the ``(D, H, W)`` layout) is accepted and its first (D)
    entry dropped, so one base config serves 2D and 3D models.
    """
    if isinstance(value, (list, tuple)) and ndim == 2 and len(value) == 3:
        value = value[1:]
    return as_tuple(value, ndim, name)


def check_spatial_axes(axes: Sequence[int], ndim: int, name: str) -> Tuple[int, ...]:
    """
    ``axes`` as a tuple, after checking that it lists distinct array axes of ``ndim`` spatial
    dims (0 .. ndim - 1; may be empty); else ValueError naming ``name`` (a config key).
    """
    axes = list(axes)
    valid = all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < ndim for a in axes)
    if not valid or len(set(axes)) != len(axes):
        raise ValueError(
            f"{name} must list distinct spatial axes in 0..{ndim - 1} (array order), got {axes!r}"
        )
    return tuple(axes)


def box_axis_to_array_axis(k: int, ndim: int) -> int:
    """Array axis (0 = D or H) along which box coordinate ``k`` (x=0, y=1, z=2) runs."""
    if not 0 <= k < ndim:
        raise ValueError(f"box axis {k} out of range for ndim={ndim}")
    return ndim - 1 - k


def array_axis_to_box_axis(a: int, ndim: int) -> int:
    """Box coordinate (x=0, y=1, z=2) that runs along array axis ``a``; inverse of the above."""
    if not 0 <= a < ndim:
        raise ValueError(f"array axis {a} out of range for ndim={ndim}")
    return ndim - 1 - a


def array_shape_to_box_order(shape: Sequence[Any]) -> Tuple[Any, ...]:
    """``(D, H, W)`` -> ``(W, H, D)``: per-array-axis values reordered per box coordinate."""
    return tuple(reversed(tuple(shape)))


def box_order_to_array_shape(values: Sequence[Any]) -> Tuple[Any, ...]:
    """``(sx, sy, sz)`` -> ``(sz, sy, sx)``: per-box-coordinate values reordered per array axis."""
    return tuple(reversed(tuple(values)))
