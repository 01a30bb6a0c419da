"""
Reading and writing volumes: TIFF (plain, ImageJ hyperstack, OME; memory-mapped when the file
allows) and zarr (lazy).

Every reader returns the layout of docs/conventions.md, ``(C, D, H, W)``, keeping the file's dtype
(intensity normalisation is the mapper's job). Every error names the file at fault.

Axes. A TIFF written by ImageJ, by OME tools or by tifffile with an ``axes`` entry in its metadata
says its axes (``series[0].axes``, e.g. ``"ZCYX"``, ``"TZCYX"``); otherwise the axes follow from the
number of dimensions: 2 -> ``YX`` (D = 1), 3 -> ``ZYX``, 4 -> ``CZYX``. ``axes=`` overrides both.
Letters: ``T`` (time, must have size 1), ``Z``, ``C`` or ``S`` (channels / samples), ``Y``, ``X``;
any other letter must have size 1.
"""

import logging
import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import tifffile

from det3d.utils.file_io import atomic_write

__all__ = [
    "read_volume",
    "read_labels",
    "write_volume",
    "read_spacing",
    "volume_shape",
    "LazyVolume",
    "is_zarr_path",
    "check_spacing",
    "read_slices",
]

logger = logging.getLogger(__name__)

_TIFF_EXTS = (".tif", ".tiff")
# dtypes an ImageJ hyperstack can hold; others are written as plain tifffile TIFFs
_IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


# --------------------------------------------------------------------------------------------- #
# Axes
# --------------------------------------------------------------------------------------------- #
def _default_axes(ndim: int, path: str) -> str:
    if ndim == 2:
        return "YX"
    if ndim == 3:
        return "ZYX"
    if ndim == 4:
        return "CZYX"
    raise ValueError(
        f"{path}: cannot guess the axes of a {ndim}-D array; expected 2 (YX), 3 (ZYX) or "
        f"4 (CZYX) dims, or pass axes= (e.g. 'TZCYX')"
    )


def _axes_plan(axes: str, shape: Sequence[int], path: str) -> Tuple[Tuple[int, ...], Tuple]:
    """
    Returns ``(squeeze, order)``: source axes to drop (size-1 extras) and, for the remaining
    source axes, their order as ``(C, Z, Y, X)`` with ``None`` for an axis to insert.
    """
    axes = axes.upper()
    if len(axes) != len(shape):
        raise ValueError(f"{path}: axes {axes!r} do not match the array shape {tuple(shape)}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"{path}: axes {axes!r} repeat a letter")
    if "C" in axes and "S" in axes:
        if shape[axes.index("S")] != 1:
            if shape[axes.index("C")] != 1:
                raise ValueError(f"{path}: both C and S axes hold several channels ({axes!r})")
            axes = axes.replace("C", "_").replace("S", "C")
        else:
            axes = axes.replace("S", "_")
    axes = axes.replace("S", "C")
    for a in ("Y", "X"):
        if a not in axes:
            raise ValueError(f"{path}: axes {axes!r} lack {a!r}")
    squeeze = []
    for i, (a, n) in enumerate(zip(axes, shape)):
        if a not in "CZYX":
            if n != 1:
                what = "time points" if a == "T" else f"entries along axis {a!r}"
                raise ValueError(
                    f"{path}: {n} {what} (axes {axes!r}, shape {tuple(shape)}); det3d reads one "
                    f"volume per file, so every axis other than C, Z, Y, X must have size 1"
                )
            squeeze.append(i)
    kept = "".join(a for i, a in enumerate(axes) if i not in squeeze)
    order = tuple(kept.index(a) if a in kept else None for a in "CZYX")
    return tuple(squeeze), order


def _to_czyx(arr, squeeze: Tuple[int, ...], order: Tuple) -> np.ndarray:
    """Applies an :func:`_axes_plan` with views only (a memmap stays a memmap)."""
    if squeeze:
        arr = arr.reshape([n for i, n in enumerate(arr.shape) if i not in squeeze])
    present = [o for o in order if o is not None]
    arr = arr.transpose(present)
    for k, o in enumerate(order):
        if o is None:
            arr = np.expand_dims(arr, k)
    return arr


# --------------------------------------------------------------------------------------------- #
# zarr
# --------------------------------------------------------------------------------------------- #
def is_zarr_path(path: str) -> bool:
    """True for ``x.zarr``, ``x.zarr/component`` and directories (zarr directory stores)."""
    p = os.fspath(path).rstrip("/")
    return ".zarr" in p.split(os.sep)[-1] or ".zarr/" in p or os.path.isdir(p)


def _split_zarr_path(path: str, component: Optional[str]) -> Tuple[str, Optional[str]]:
    p = os.fspath(path).rstrip("/")
    if ".zarr/" in p:
        store, comp = p.split(".zarr/", 1)
        if component is not None and component != comp:
            raise ValueError(f"{path}: component given twice ({comp!r} and {component!r})")
        return store + ".zarr", comp
    return p, component


def _open_zarr(path: str, component: Optional[str]):
    import zarr

    store, comp = _split_zarr_path(path, component)
    if not os.path.exists(store):
        raise FileNotFoundError(f"{path}: no such zarr store")
    try:
        node = zarr.open(store=store, mode="r", path=comp or "")
    except Exception as e:
        raise OSError(f"{path}: cannot open as a zarr array ({type(e).__name__}: {e})") from e
    attrs = {}
    if comp and hasattr(node, "shape"):  # OME-Zarr keeps the axes on the parent group
        parent = comp.rstrip("/").rsplit("/", 1)[0] if "/" in comp.rstrip("/") else ""
        try:
            attrs = dict(zarr.open_group(store=store, mode="r", path=parent).attrs)
        except Exception:
            attrs = {}
    if not hasattr(node, "shape"):  # a group: OME-Zarr "0", else its only array
        attrs = dict(node.attrs)
        keys = sorted(node.array_keys())
        if "0" in keys:
            name = "0"
        elif len(keys) == 1:
            name = keys[0]
        else:
            raise ValueError(
                f"{path}: zarr group holds arrays {keys}; name one with "
                f"'{store}/<name>' or component=<name>"
            )
        node = node[name]
    attrs.update(dict(node.attrs))
    return node, attrs


def _zarr_axes(attrs: dict) -> Optional[str]:
    ms = attrs.get("multiscales")
    if isinstance(ms, list) and ms and isinstance(ms[0], dict) and "axes" in ms[0]:
        names = [a["name"] if isinstance(a, dict) else a for a in ms[0]["axes"]]
        return "".join(str(n)[0].upper() for n in names)
    if isinstance(attrs.get("axes"), str):
        return attrs["axes"]
    return None


def _zarr_spacing(attrs: dict) -> Optional[Tuple[float, float, float]]:
    if "spacing" in attrs:
        return tuple(float(s) for s in attrs["spacing"])
    try:
        ms = attrs["multiscales"][0]
        axes = _zarr_axes(attrs)
        scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
        d = dict(zip(axes, scale))
        return (float(d.get("Z", 1.0)), float(d["Y"]), float(d["X"]))
    except (KeyError, IndexError, TypeError):
        return None


class LazyVolume:
    """
    A zarr array seen as ``(C, D, H, W)`` without reading it. Indexing (``vol[:, 0:8]``) reads
    only the chunks needed; ``np.asarray(vol)`` reads everything.

    Attributes:
        shape (tuple): ``(C, D, H, W)``; dtype; ndim (4); path.
    """

    def __init__(self, array, axes: str, path: str):
        self._array = array
        self.path = path
        self._squeeze, self._order = _axes_plan(axes, array.shape, path)
        shape = [n for i, n in enumerate(array.shape) if i not in self._squeeze]
        self.shape = tuple(shape[o] if o is not None else 1 for o in self._order)
        self.dtype = np.dtype(array.dtype)
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (4 - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (4 - len(key))
        drop = [k for k, s in enumerate(key) if isinstance(s, (int, np.integer))]
        key = tuple(
            slice(s, s + 1 if s != -1 else None) if k in drop else s for k, s in enumerate(key)
        )
        # source key: kept source axis j gets the slice of the target axis that reads it
        kept_keys = {}
        for t, o in enumerate(self._order):
            if o is not None:
                kept_keys[o] = key[t]
        src_key, j = [], 0
        for i in range(len(self._array.shape)):
            if i in self._squeeze:
                src_key.append(slice(None))
            else:
                src_key.append(kept_keys[j])
                j += 1
        out = np.asarray(self._array[tuple(src_key)])
        out = _to_czyx(out, self._squeeze, self._order)
        # size-1 inserted axes are not sliced by the source read; apply their slices here
        out = out[tuple(key[t] if o is None else slice(None) for t, o in enumerate(self._order))]
        return out.reshape([n for k, n in enumerate(out.shape) if k not in drop]) if drop else out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self).astype(dtype)

    def __repr__(self) -> str:
        return f"LazyVolume({self.path!r}, shape={self.shape}, dtype={self.dtype})"


# --------------------------------------------------------------------------------------------- #
# Readers
# --------------------------------------------------------------------------------------------- #
def _check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")


def _tiff_axes(tif: "tifffile.TiffFile") -> Optional[str]:
    series = tif.series[0]
    if tif.is_imagej or tif.is_ome:
        return series.axes
    shaped = tif.shaped_metadata
    if shaped and isinstance(shaped[0], dict) and "axes" in shaped[0]:
        return series.axes
    return None


def read_volume(
    path: str, axes: Optional[str] = None, component: Optional[str] = None
) -> Union[np.ndarray, LazyVolume]:
    """
    Reads a volume as ``(C, D, H, W)``, dtype as stored.

    Args:
        path: a TIFF file, or a zarr store (``x.zarr``, ``x.zarr/<component>``, a directory).
        axes: the file's axes, e.g. ``"ZYX"``, ``"ZCYX"``, ``"TZCYX"``; default: from the
            file's metadata, else from the number of dims (2 YX, 3 ZYX, 4 CZYX).
        component: array inside a zarr group (default: ``"0"`` or the group's only array).

    Returns:
        TIFF: a ``np.memmap`` view when the data are stored uncompressed and contiguous, else an
        in-memory ``np.ndarray``. zarr: a :class:`LazyVolume` (read on indexing/``np.asarray``).
    """
    path = os.fspath(path)
    if is_zarr_path(path) and not path.lower().endswith(_TIFF_EXTS):
        array, attrs = _open_zarr(path, component)
        _check_not_empty(array.shape, path)
        return LazyVolume(array, axes or _zarr_axes(attrs) or _default_axes(array.ndim, path), path)
    _check_exists(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, file_axes = tuple(series.shape), _tiff_axes(tif)
            truncated = _imagej_truncation(tif, shape)
            mappable = series.dataoffset is not None and not truncated
            data = None if mappable or truncated else series.asarray()
    except Exception as e:
        raise OSError(f"{path}: cannot read as TIFF ({type(e).__name__}: {e})") from e
    if truncated:
        raise OSError(f"{path}: truncated or corrupt TIFF: {truncated}")
    _check_not_empty(shape, path)
    if mappable:
        try:
            data = tifffile.memmap(path, series=0, mode="r")
        except Exception:  # e.g. an odd byte layout: fall back to reading
            try:
                data = tifffile.imread(path, series=0)
            except Exception as e:  # e.g. a truncated file: "failed to read 65536 bytes"
                raise OSError(f"{path}: cannot read as TIFF ({type(e).__name__}: {e})") from e
        if data.shape != shape:  # tifffile may squeeze differently; keep the series shape
            data = data.reshape(shape)
    axes = axes or file_axes or _default_axes(len(shape), path)
    squeeze, order = _axes_plan(axes, shape, path)
    return _to_czyx(data, squeeze, order)


def _imagej_truncation(tif: "tifffile.TiffFile", shape: Sequence[int]) -> Optional[str]:
    """
    A truncated ImageJ hyperstack reads as its first plane (tifffile only logs it), which would
    silently make a volume one slice deep: returns what is missing, or None.
    """
    if not tif.is_imagej:
        return None
    expected = int((tif.imagej_metadata or {}).get("images", 1))
    planes = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    if tif.series[0].axes.endswith("S"):  # RGB samples are not planes
        planes = int(np.prod(shape[:-3])) if len(shape) > 3 else 1
    if planes < expected:
        return f"its ImageJ metadata announce {expected} images, the file holds {planes}"
    return None


def _check_not_empty(shape: Sequence[int], path: str) -> None:
    """A volume with a zero-size axis holds no voxels: refuse it when read, naming the file."""
    if any(int(n) == 0 for n in shape):
        raise ValueError(f"{path}: the volume has a zero-size axis (shape {tuple(shape)})")


def read_slices(volume, zs: Sequence[int]) -> np.ndarray:
    """
    z-slices ``zs`` of a ``(C, D, H, W)`` volume from :func:`read_volume` (memmap, ndarray or
    :class:`LazyVolume`), reading only those slices: ``(C, len(zs), H, W)`` in the file's dtype.
    """
    if len(zs) == 0:
        return np.zeros((volume.shape[0], 0) + tuple(volume.shape[2:]), volume.dtype)
    return np.concatenate([np.asarray(volume[:, int(z) : int(z) + 1]) for z in zs], axis=1)


def volume_shape(path: str, axes: Optional[str] = None) -> Tuple[int, int, int, int]:
    """``(C, D, H, W)`` of a volume file, read from its header only."""
    path = os.fspath(path)
    if is_zarr_path(path) and not path.lower().endswith(_TIFF_EXTS):
        return read_volume(path, axes).shape
    _check_exists(path)
    try:
        with tifffile.TiffFile(path) as tif:
            shape, file_axes = tuple(tif.series[0].shape), _tiff_axes(tif)
            truncated = _imagej_truncation(tif, shape)
    except Exception as e:
        raise OSError(f"{path}: cannot read as TIFF ({type(e).__name__}: {e})") from e
    if truncated:
        raise OSError(f"{path}: truncated or corrupt TIFF: {truncated}")
    _check_not_empty(shape, path)
    squeeze, order = _axes_plan(axes or file_axes or _default_axes(len(shape), path), shape, path)
    kept = [n for i, n in enumerate(shape) if i not in squeeze]
    return tuple(kept[o] if o is not None else 1 for o in order)


def read_labels(path: str, axes: Optional[str] = None) -> np.ndarray:
    """
    Reads an instance label volume: 0 = background, every other value one instance.

    Returns:
        ndarray: int32 ``(D, H, W)`` (``D = 1`` for a 2D file), in memory.

    Raises:
        ValueError (naming the file): several channels, negative labels, float labels that are
        not whole numbers (or NaN), labels beyond int32.
    """
    vol = read_volume(path, axes)
    if vol.shape[0] != 1:
        raise ValueError(f"{path}: a label volume must have one channel, got shape {vol.shape}")
    arr = np.asarray(vol[0])
    return labels_to_int32(arr, path)


def labels_to_int32(arr: np.ndarray, name: str = "labels") -> np.ndarray:
    """Checks and converts a label array to int32; errors name ``name`` (usually the file)."""
    dt = arr.dtype
    if dt == np.bool_:
        return arr.astype(np.int32)
    if np.issubdtype(dt, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: label volume holds NaN or Inf values")
        if np.any(arr != np.round(arr)):
            raise ValueError(
                f"{name}: label volume has dtype {dt} with non-integer values; labels must be "
                f"whole numbers (instance ids)"
            )
    elif not np.issubdtype(dt, np.integer):
        raise ValueError(f"{name}: label volume has unsupported dtype {dt}")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0:
            raise ValueError(f"{name}: label volume holds negative values (min {lo})")
        if hi > np.iinfo(np.int32).max:
            raise ValueError(f"{name}: label {hi} does not fit in int32")
    return np.ascontiguousarray(arr, dtype=np.int32)


def check_spacing(spacing, source: str) -> Tuple[float, float, float]:
    """
    Validates a voxel spacing where it enters det3d (registration, file metadata, the mapper).

    Args:
        spacing: ``(z, y, x)`` micrometres.
        source: what the spacing belongs to (a file, a dataset, a config key), for the error.

    Returns:
        tuple of 3 floats.

    Raises:
        ValueError naming ``source`` and the value: not 3 numbers, or one of them not finite and
        positive (a spacing of 0 would resample a volume to nothing).
    """
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(
            f"{source}: spacing must be 3 numbers (z, y, x) in micrometres, got {spacing!r}"
        ) from None
    if len(values) != 3:
        raise ValueError(
            f"{source}: spacing must be 3 numbers (z, y, x) in micrometres, got {spacing!r}"
        )
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{source}: spacing {values} has a value that is not a positive number")
    return values


def read_spacing(path: str) -> Optional[Tuple[float, float, float]]:
    """
    Voxel spacing ``(z, y, x)`` from the file's metadata, or None where the file has none.

    Reads OME ``PhysicalSize{Z,Y,X}``, ImageJ ``spacing`` + the X/Y resolution tags, det3d's own
    ``spacing`` entry in tifffile's metadata, and OME-Zarr ``scale`` / a zarr ``spacing`` attribute.

    Raises:
        ValueError naming the file when the metadata hold a spacing that is not 3 positive
        numbers (:func:`check_spacing`).
    """
    spacing = _read_spacing(path)
    return None if spacing is None else check_spacing(spacing, f"{path} (metadata)")


def _read_spacing(path: str) -> Optional[Tuple[float, float, float]]:
    path = os.fspath(path)
    if is_zarr_path(path) and not path.lower().endswith(_TIFF_EXTS):
        return _zarr_spacing(_open_zarr(path, None)[1])
    _check_exists(path)
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome:
                sp = _ome_spacing(tif.ome_metadata)
                if sp is not None:
                    return sp
            shaped = tif.shaped_metadata
            if shaped and isinstance(shaped[0], dict) and "spacing" in shaped[0]:
                return tuple(float(s) for s in shaped[0]["spacing"])
            if tif.is_imagej:
                ij = tif.imagej_metadata or {}
                page = tif.pages[0]
                y = _resolution_to_spacing(page.tags.get("YResolution"))
                x = _resolution_to_spacing(page.tags.get("XResolution"))
                z = ij.get("spacing")
                if z is None and "unit" not in ij:  # uncalibrated (resolution tags default to 1)
                    return None
                x = x if x is not None else 1.0
                y = y if y is not None else x
                return (float(z) if z is not None else 1.0, y, x)
    except Exception as e:
        raise OSError(f"{path}: cannot read TIFF metadata ({type(e).__name__}: {e})") from e
    return None


def _resolution_to_spacing(tag) -> Optional[float]:
    if tag is None:
        return None
    num, den = tag.value
    if num == 0:
        return None
    return den / num


def _ome_spacing(xml: str) -> Optional[Tuple[float, float, float]]:
    import re

    vals = {}
    for a in "ZYX":
        m = re.search(rf'PhysicalSize{a}="([0-9.eE+-]+)"', xml or "")
        if m:
            vals[a] = float(m.group(1))
    if not vals:
        return None
    x = vals.get("X", 1.0)
    return (vals.get("Z", 1.0), vals.get("Y", x), x)


# --------------------------------------------------------------------------------------------- #
# Writer
# --------------------------------------------------------------------------------------------- #
def write_volume(
    path: str, array: np.ndarray, spacing: Optional[Sequence[float]] = None, compress: bool = False
) -> None:
    """
    Writes a volume atomically (a temporary file in the same folder, then ``os.replace``), as an
    ImageJ hyperstack where ImageJ can hold the dtype (uint8, uint16, float32), with the spacing
    in its metadata (z in ``spacing``, y/x as resolution, unit micron).

    Integer label volumes (int32/int64/bool) are stored as uint16 (or uint8) when their values
    fit, so that ImageJ and Fiji open them; otherwise as a plain tifffile TIFF that records the
    axes and the spacing in its own metadata. Either way :func:`read_volume` /
    :func:`read_labels` / :func:`read_spacing` read them back exactly.

    Args:
        array: ``(D, H, W)``, ``(C, D, H, W)`` or ``(H, W)``.
        spacing: ``(z, y, x)`` micrometres.
        compress: zlib compression (the file is then not memory-mappable).
    """
    path = os.fspath(path)
    array = np.asarray(array)
    axes = {2: "YX", 3: "ZYX", 4: "CZYX"}.get(array.ndim)
    if axes is None:
        raise ValueError(
            f"{path}: write_volume takes (H, W), (D, H, W) or (C, D, H, W), got {array.shape}"
        )
    if array.dtype == np.bool_ or (
        np.issubdtype(array.dtype, np.integer) and array.dtype not in _IMAGEJ_DTYPES
    ):
        if array.size == 0 or (array.min() >= 0 and array.max() <= np.iinfo(np.uint16).max):
            array = array.astype(np.uint16 if array.size == 0 or array.max() > 255 else np.uint8)
    if spacing is not None:
        spacing = check_spacing(spacing, path)
    kwargs = {"compression": "zlib"} if compress else {}

    def write(f) -> None:
        if array.dtype in _IMAGEJ_DTYPES:
            if array.ndim == 4:  # ImageJ's order is TZCYXS
                data, ij_axes = np.ascontiguousarray(array.transpose(1, 0, 2, 3)), "ZCYX"
            else:
                data, ij_axes = array, axes
            metadata = {"axes": ij_axes}
            resolution = None
            if spacing is not None:
                metadata.update(spacing=spacing[0], unit="micron")
                resolution = (1.0 / spacing[2], 1.0 / spacing[1])
            tifffile.imwrite(
                f, data, imagej=True, metadata=metadata, resolution=resolution, **kwargs
            )
        else:
            metadata = {"axes": axes}
            if spacing is not None:
                metadata["spacing"] = list(spacing)
            tifffile.imwrite(f, array, metadata=metadata, photometric="minisblack", **kwargs)

    atomic_write(path, write)
