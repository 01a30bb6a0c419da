"""
Mosaic: several training volumes joined side by side into one input.

A model trained on whole volumes of one size learns features that lean on that size: its deepest
levels (a stride-32 map of a 64^3 volume is 2^3 cells) see the volume's border from every cell,
and group normalisation takes its statistics over the whole input. Applied to a larger volume, or
a tile of one, the same objects then look different to it (``toy3d``: the test volumes placed in a
128^3 volume of their own background lost 0.04 SEG, MODEL_ZOO.md). YOLOv4's mosaic joins four
training images into one; here volumes are joined along one spatial axis, so a sample is larger
than any one volume while a batch holds as many voxels as before. On ``toy3d`` it did not make
128^3 inputs score better (MODEL_ZOO.md, row 83), so the planner leaves it off.
"""

from typing import Dict, Sequence, Tuple

import numpy as np

from det3d.utils.axes import check_spatial_axes

__all__ = ["check_mosaic", "join_volumes"]


def check_mosaic(
    num_volumes: int,
    axes: Sequence[int],
    spatial_dims: int,
    names: Tuple[str, str] = ("num_volumes", "axes"),
) -> None:
    """
    Raises ValueError naming the value (by ``names``: the arguments', or a config's keys) unless
    ``num_volumes`` >= 1 and ``axes`` lists distinct spatial axes (0 .. ``spatial_dims - 1``;
    empty: every one).
    """
    if isinstance(num_volumes, bool) or not isinstance(num_volumes, int) or num_volumes < 1:
        raise ValueError(f"{names[0]} must be an int >= 1 (1 = no mosaic), got {num_volumes!r}")
    check_spatial_axes(axes, spatial_dims, names[1])


def join_volumes(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    classes: Sequence[Dict[int, int]],
    axis: int,
) -> Tuple[np.ndarray, np.ndarray, Dict[int, int]]:
    """
    Joins volumes one after another along spatial ``axis``; along the other axes each is placed at
    the start and padded to the largest (image 0, labels 0, as :class:`RandomCrop` pads).

    Args:
        images: ``(C, *spatial)`` arrays with the same channel count and number of spatial axes.
        labels: label volumes ``(*spatial)`` matching ``images``; ids 1..N per volume (0 =
            background), as the mapper's compacted labels.
        classes: per volume, label id -> class index.
        axis: spatial axis (0 = the first spatial axis) to join along.

    Returns:
        image ``(C, *spatial)``, labels (each volume's ids shifted past the previous volumes'
        largest, so no two objects share one), and the id -> class map of the joined labels.
    """
    if not images or len(images) != len(labels) or len(images) != len(classes):
        raise ValueError(
            f"join_volumes: {len(images)} images, {len(labels)} label volumes and "
            f"{len(classes)} class maps; need one of each per volume, at least one"
        )
    ndim = images[0].ndim - 1
    for img, lab in zip(images, labels):
        if img.ndim != ndim + 1 or img.shape[0] != images[0].shape[0]:
            raise ValueError(
                f"join_volumes: images {[im.shape for im in images]} differ in channels or "
                f"spatial dimensions"
            )
        if tuple(img.shape[1:]) != tuple(lab.shape):
            raise ValueError(f"join_volumes: image {img.shape} and labels {lab.shape} differ")
    if not 0 <= axis < ndim:
        raise ValueError(f"join_volumes: axis {axis} is not a spatial axis of {ndim}")
    shape = [max(lab.shape[a] for lab in labels) for a in range(ndim)]
    shape[axis] = sum(lab.shape[axis] for lab in labels)
    image = np.zeros((images[0].shape[0], *shape), dtype=np.result_type(*images))
    dtype = np.result_type(np.int32, *labels)
    joined = np.zeros(shape, dtype=dtype)
    out_classes: Dict[int, int] = {}
    start, offset = 0, 0
    for img, lab, cls in zip(images, labels, classes):
        where = tuple(
            slice(start, start + n) if a == axis else slice(0, n) for a, n in enumerate(lab.shape)
        )
        image[(slice(None), *where)] = img
        joined[where] = np.where(lab > 0, lab + offset, 0)
        out_classes.update({int(k) + offset: int(v) for k, v in cls.items()})
        top = int(lab.max()) if lab.size else 0
        offset += max([top] + [int(k) for k in cls])
        start += lab.shape[axis]
    return image, joined, out_classes
