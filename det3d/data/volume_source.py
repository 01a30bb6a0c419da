"""
Volumes read region by region, for prediction on volumes larger than memory.

:class:`VolumeSource` opens a TIFF or zarr volume (det3d's readers and axes rules,
:func:`det3d.data.io.read_volume`) without reading it, and reads any region ``(C, d, h, w)``:
uncompressed TIFFs through a memory map opened for each read (so pages read once do not stay
mapped), compressed TIFFs page by page through tifffile's zarr view, zarr chunk by chunk. It pickles
as its path, so Dask workers reopen it themselves.

:func:`intensity_bounds` computes the per-channel percentiles that
:func:`det3d.data.dataset_mapper.normalize_percentiles` would, in bounded memory;
:class:`ForegroundMask` says which tiles hold foreground according to a mask volume of any
resolution.
"""

import logging
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tifffile

from .dataset_mapper import percentile_bounds
from .io import LazyVolume, _default_axes, _tiff_axes, is_zarr_path, read_volume

__all__ = ["VolumeSource", "ForegroundMask", "intensity_bounds", "EXACT_PERCENTILE_VOXELS"]

logger = logging.getLogger(__name__)

# Up to this many voxels per channel, percentiles are computed on the whole volume in memory
# (exactly as the dataset mapper does); above it, from a histogram (8/16-bit integer volumes,
# still exact) or from evenly spaced slices (other dtypes).
EXACT_PERCENTILE_VOXELS = 2**24
_SLAB_VOXELS = 2**22  # voxels per read when streaming over a whole volume


class VolumeSource:
    """
    A volume ``(C, D, H, W)`` read region by region.

    Args:
        path: TIFF file or zarr store (also ``x.zarr/<component>``, OME-Zarr groups: level 0).
        axes: the file's axes (see :func:`det3d.data.io.read_volume`); default from the file.

    Attributes:
        path, axes, shape ``(C, D, H, W)``, dtype.
    """

    def __init__(self, path: str, axes: Optional[str] = None):
        self.path = str(path)
        self.axes = axes
        vol = self._open()
        self.shape = tuple(int(n) for n in vol.shape)
        self.dtype = np.dtype(vol.dtype)
        if len(self.shape) != 4:
            raise ValueError(f"{self.path}: expected a (C, D, H, W) volume, got {self.shape}")

    def _open(self):
        if is_zarr_path(self.path) and not self.path.lower().endswith((".tif", ".tiff")):
            if getattr(self, "_lazy", None) is None:
                # zarr reads only the chunks asked for; keeping it open costs nothing
                self._lazy = read_volume(self.path, self.axes)
            return self._lazy
        vol = read_volume(self.path, self.axes)
        if isinstance(vol, np.memmap) or isinstance(getattr(vol, "base", None), np.memmap):
            return vol
        # compressed TIFF: read page by page through tifffile's zarr view instead of keeping
        # the whole decoded volume
        self._lazy = self._tiff_lazy()
        return self._lazy

    def _tiff_lazy(self) -> LazyVolume:
        import zarr

        with tifffile.TiffFile(self.path) as tif:
            ndim, file_axes = len(tif.series[0].shape), _tiff_axes(tif)
        array = zarr.open(tifffile.imread(self.path, aszarr=True), mode="r")
        axes = self.axes or file_axes or _default_axes(ndim, self.path)
        return LazyVolume(array, axes, self.path)

    def read(self, region: Sequence[slice]) -> np.ndarray:
        """
        Args:
            region: slices over ``(D, H, W)``.

        Returns:
            ndarray ``(C, d, h, w)`` in the file's dtype, in memory.
        """
        vol = getattr(self, "_lazy", None)
        vol = self._open() if vol is None else vol
        out = np.array(vol[(slice(None),) + tuple(region)])
        del vol  # a memory map is closed here, so its pages leave this process
        return out

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_lazy", None)
        return state

    def __repr__(self) -> str:
        return f"VolumeSource({self.path!r}, shape={self.shape}, dtype={self.dtype})"


def _slabs(shape: Sequence[int], voxels: int = _SLAB_VOXELS):
    """z-slabs ``(slice_z, slice(None), slice(None))`` of about ``voxels`` voxels each."""
    depth, plane = shape[0], int(np.prod(shape[1:]))
    step = max(1, voxels // max(plane, 1))
    for z in range(0, depth, step):
        yield (slice(z, min(z + step, depth)), slice(None), slice(None))


def intensity_bounds(source: VolumeSource, percentiles: Sequence[float]) -> List[Tuple]:
    """
    Per-channel ``(p_low, p_high)`` of the whole volume for ``INPUT.NORM_PERCENTILES``.

    Exact (the values the dataset mapper computes) for volumes of up to
    :data:`EXACT_PERCENTILE_VOXELS` voxels per channel and for 8/16-bit integer volumes of any
    size (streamed histogram); other large volumes use evenly spaced z-slices (and rows) of
    about that many voxels. Memory: one slab, never the volume.
    """
    if not percentiles:
        return []
    spatial = source.shape[1:]
    total = int(np.prod(spatial))
    if total <= EXACT_PERCENTILE_VOXELS:
        image = source.read(tuple(slice(None) for _ in spatial)).astype(np.float32)
        if not np.all(np.isfinite(image)):
            raise ValueError(f"{source.path}: NaN/Inf voxels in the image")
        return percentile_bounds(image, percentiles)
    if np.issubdtype(source.dtype, np.integer) and source.dtype.itemsize <= 2:
        return _histogram_bounds(source, percentiles)
    return _sampled_bounds(source, percentiles, total)


def _histogram_bounds(source: VolumeSource, percentiles: Sequence[float]) -> List[Tuple]:
    offset = int(np.iinfo(source.dtype).min)
    bins = int(np.iinfo(source.dtype).max) - offset + 1
    hist = np.zeros((source.shape[0], bins), np.int64)
    for region in _slabs(source.shape[1:]):
        slab = source.read(region)
        for c in range(slab.shape[0]):
            hist[c] += np.bincount((slab[c].ravel().astype(np.int64) - offset), minlength=bins)
    bounds = []
    for c in range(source.shape[0]):
        cum = np.cumsum(hist[c])
        n = int(cum[-1])
        values = []
        for p in percentiles:
            # numpy's "linear" method: between order statistics floor(k) and floor(k) + 1
            k = p / 100.0 * (n - 1)
            i = int(math.floor(k))
            lo = int(np.searchsorted(cum, i, side="right")) + offset
            hi = int(np.searchsorted(cum, min(i + 1, n - 1), side="right")) + offset
            values.append(np.float64(lo + (hi - lo) * (k - i)))
        bounds.append(tuple(values))
    return bounds


def _sampled_bounds(source: VolumeSource, percentiles: Sequence[float], total: int) -> List[Tuple]:
    depth, height, width = source.shape[1:]
    z_step = max(1, math.ceil(total / EXACT_PERCENTILE_VOXELS))
    y_step = max(1, math.ceil(height * width / EXACT_PERCENTILE_VOXELS))
    parts = []
    for z in range(z_step // 2, depth, z_step):
        part = source.read((slice(z, z + 1), slice(None, None, y_step), slice(None)))
        part = part.astype(np.float32)
        if not np.all(np.isfinite(part)):
            raise ValueError(f"{source.path}: NaN/Inf voxels in z-slice {z}")
        parts.append(part.reshape(part.shape[0], -1))
    logger.info(
        f"{source.path}: intensity percentiles from every {z_step}th z-slice "
        f"({sum(p.shape[1] for p in parts)} voxels per channel)"
    )
    return percentile_bounds(np.concatenate(parts, axis=1), percentiles)


class ForegroundMask:
    """
    A mask volume (any resolution: it is stretched over the image) telling which tiles hold
    foreground: a tile is foreground when any mask voxel that overlaps its extent is nonzero.

    Args:
        path: TIFF or zarr, one channel; ``(d, h, w)`` any size (2D: one mask for every z).
        volume_shape: ``(D, H, W)`` of the image.
    """

    def __init__(self, path: str, volume_shape: Sequence[int], axes: Optional[str] = None):
        self.source = VolumeSource(path, axes)
        if self.source.shape[0] != 1:
            raise ValueError(
                f"{path}: a foreground mask must have one channel, got shape {self.source.shape}"
            )
        self.volume_shape = tuple(int(n) for n in volume_shape)
        self.path = str(path)

    def region_has_foreground(self, start: Sequence[int], stop: Sequence[int]) -> bool:
        """Whether the mask is nonzero anywhere over the image region ``[start, stop)``."""
        region = []
        for a, b, n, m in zip(start, stop, self.volume_shape, self.source.shape[1:]):
            lo = min(int(math.floor(a * m / n)), m - 1)
            hi = max(int(math.ceil(b * m / n)), lo + 1)
            region.append(slice(lo, hi))
        return bool(np.any(self.source.read(tuple(region))))
