"""
Outputs of prediction: instance label volumes written tile by tile, and per-object tables.

A label volume grows in a chunked int32 zarr array (:func:`create_label_store`) that tiles are
painted into; when every tile is in, :func:`finalize_labels` turns it into the output the user
reads, with the voxel spacing in its metadata:

* ``"tiff"``: an ImageJ hyperstack (uint8/uint16 labels; beyond 65535 objects a plain int32 TIFF
  with det3d's metadata), written slice by slice, atomically;
* ``"zarr"``: the zarr array itself, attributes ``spacing`` ``[z, y, x]`` and ``axes`` ``"ZYX"``;
* ``"ome-zarr"``: an OME-Zarr (NGFF 0.4) image group whose level ``"0"`` is the labels, with the
  spacing as its ``scale`` transformation (one resolution level).

Each lands under its final name only when complete, so a half-written output is never presented
as finished. :class:`ObjectTable` writes the per-object CSV.
"""

import csv
import io
import os
import shutil
import tempfile
from typing import Iterable, List, Optional, Sequence

import numpy as np
import tifffile

from det3d.utils.file_io import atomic_write

__all__ = [
    "LABEL_FORMATS",
    "create_label_store",
    "open_label_store",
    "finalize_labels",
    "label_output_path",
    "ObjectTable",
    "replace_path",
    "write_outline_montage",
]

LABEL_FORMATS = ("tiff", "zarr", "ome-zarr")
_SUFFIX = {"tiff": "_labels.tif", "zarr": "_labels.zarr", "ome-zarr": "_labels.ome.zarr"}


def label_output_path(output_dir: str, name: str, fmt: str) -> str:
    """Where the label volume of input ``name`` goes for format ``fmt``."""
    return os.path.join(output_dir, name + _SUFFIX[fmt])


def _chunks(shape: Sequence[int]) -> tuple:
    # (32, 256, 256) int32 chunks: 8 MiB raw, a few hundred KiB compressed for sparse labels
    return tuple(min(int(n), c) for n, c in zip(shape, (32, 256, 256)))


def create_label_store(path: str, shape: Sequence[int], ome: bool = False):
    """
    Creates an empty (all 0) int32 zarr label array ``shape`` at ``path`` (zarr format 2); with
    ``ome``, a group holding it as ``"0"``. Returns the array, open for writing.
    """
    import zarr

    shape = tuple(int(n) for n in shape)
    if ome:
        group = zarr.open_group(store=path, mode="w", zarr_format=2)
        return group.create_array(
            "0", shape=shape, chunks=_chunks(shape), dtype="int32", fill_value=0
        )
    return zarr.create_array(
        store=path, shape=shape, chunks=_chunks(shape), dtype="int32", fill_value=0, zarr_format=2
    )


def open_label_store(path: str, ome: bool = False):
    """Opens a store made by :func:`create_label_store` for reading and writing."""
    import zarr

    if ome:
        return zarr.open_group(store=path, mode="r+")["0"]
    return zarr.open_array(store=path, mode="r+")


def replace_path(src: str, dst: str) -> None:
    """Moves file or folder ``src`` to ``dst``, replacing what is there (a folder too)."""
    if os.path.isdir(dst) and not os.path.islink(dst):
        trash = tempfile.mkdtemp(
            prefix="." + os.path.basename(dst) + ".old-", dir=os.path.dirname(os.path.abspath(dst))
        )
        os.replace(dst, os.path.join(trash, "old"))
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def finalize_labels(
    store_path: str,
    final_path: str,
    fmt: str,
    spacing: Optional[Sequence[float]],
    max_label: int,
) -> None:
    """
    Turns a finished label store into the output ``final_path`` of format ``fmt``.

    Args:
        store_path: made by :func:`create_label_store` (with ``ome=(fmt == "ome-zarr")``);
            moved to ``final_path`` for the zarr formats, read for TIFF.
        spacing: ``(z, y, x)`` micrometres, or None.
        max_label: the largest id in the volume (chooses the TIFF dtype).
    """
    import zarr

    if fmt not in LABEL_FORMATS:
        raise ValueError(f"label format must be one of {LABEL_FORMATS}, got {fmt!r}")
    spacing = None if spacing is None else [float(s) for s in spacing]
    if fmt == "tiff":
        _write_tiff(open_label_store(store_path), final_path, spacing, max_label)
        return
    if fmt == "zarr":
        array = zarr.open_array(store=store_path, mode="r+")
        array.attrs.update({"axes": "ZYX", **({"spacing": spacing} if spacing else {})})
    else:
        group = zarr.open_group(store=store_path, mode="r+")
        group.attrs.update(_ome_metadata(spacing or [1.0, 1.0, 1.0]))
    replace_path(store_path, final_path)


def _ome_metadata(spacing: List[float]) -> dict:
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in ("z", "y", "x")]
    return {
        "multiscales": [
            {
                "version": "0.4",
                "name": "labels",
                "axes": axes,
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [{"type": "scale", "scale": spacing}],
                    }
                ],
            }
        ],
        "image-label": {"version": "0.4"},
    }


def _write_tiff(array, path: str, spacing: Optional[List[float]], max_label: int) -> None:
    depth, height, width = array.shape
    step = array.chunks[0]
    dtype = np.uint8 if max_label <= 255 else np.uint16 if max_label <= 65535 else np.int32

    def pages() -> Iterable[np.ndarray]:
        for z in range(0, depth, step):  # one chunk row of slices in memory at a time
            slab = np.asarray(array[z : z + step]).astype(dtype)
            yield from slab

    def write(f) -> None:
        if dtype != np.int32:  # ImageJ hyperstack, as det3d.data.write_volume writes labels
            metadata, resolution = {"axes": "ZYX"}, None
            if spacing is not None:
                metadata.update(spacing=spacing[0], unit="micron")
                resolution = (1.0 / spacing[2], 1.0 / spacing[1])
            tifffile.imwrite(
                f, pages(), shape=(depth, height, width), dtype=dtype, imagej=True,
                metadata=metadata, resolution=resolution,
            )
        else:
            metadata = {"axes": "ZYX", **({"spacing": spacing} if spacing else {})}
            tifffile.imwrite(
                f, pages(), shape=(depth, height, width), dtype=dtype, metadata=metadata,
                photometric="minisblack", bigtiff=depth * height * width * 4 > 2**31,
            )

    atomic_write(path, write)


class ObjectTable:
    """
    The per-object CSV of one volume: label id, class, score, bounding box ``[start, stop)``
    (voxels), centroid (mean voxel index, and in micrometres), volume (voxels and cubic
    micrometres). Rows are appended as tiles are painted; :meth:`append` returns the file size,
    which a resumed run truncates back to (:meth:`truncate`).

    Args:
        path: the CSV being written.
        class_names: name of each class index.
        spacing: ``(z, y, x)`` micrometres (1 when unknown).
    """

    COLUMNS = (
        ["label", "class_id", "class_name", "score"]
        + ["bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1"]
        + ["centroid_z", "centroid_y", "centroid_x"]
        + ["centroid_z_um", "centroid_y_um", "centroid_x_um"]
        + ["volume_voxels", "volume_um3"]
    )

    def __init__(self, path: str, class_names: Sequence[str], spacing: Sequence[float]):
        self.path = path
        self.class_names = list(class_names)
        self.spacing = tuple(float(s) for s in spacing)

    def start(self) -> int:
        """Writes the header (a new file); returns the file size."""
        return self._write([self.COLUMNS], "w")

    def truncate(self, size: int) -> None:
        """Cuts the file back to ``size`` bytes (rows of tiles that were not committed)."""
        with open(self.path, "r+b") as f:
            f.truncate(size)

    def append(self, records) -> int:
        """Appends rows for ``records`` (:class:`det3d.engine.tiling.ObjectRecord`); returns the
        file size."""
        return self._write([self._row(r) for r in records], "a")

    def _row(self, r) -> list:
        name = (
            self.class_names[r.class_id]
            if 0 <= r.class_id < len(self.class_names)
            else f"class_{r.class_id}"
        )
        um = [c * s for c, s in zip(r.centroid, self.spacing)]
        return (
            [r.label, r.class_id, name, f"{r.score:.6g}"]
            + list(r.bbox)
            + [f"{c:.4f}" for c in r.centroid]
            + [f"{c:.4f}" for c in um]
            + [r.voxels, f"{r.voxels * float(np.prod(self.spacing)):.6g}"]
        )

    def _write(self, rows: list, mode: str) -> int:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        with open(self.path, mode) as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
            return f.tell()


def write_outline_montage(
    path: str, source, bounds, store_path: str, fmt: str, num_slices: int = 8, max_side: int = 512
) -> None:
    """
    A PNG of ``num_slices`` evenly spaced z-slices of the image with the labels' outlines drawn
    over them (:func:`det3d.utils.visualizer.volume_montage`), read slice by slice and subsampled
    in y/x to at most ``max_side`` voxels, so any volume size fits in memory.

    Args:
        source: the image (:class:`det3d.data.volume_source.VolumeSource`); bounds: its
            intensity bounds; store_path, fmt: the label store (see :func:`create_label_store`).
    """
    from det3d.utils.visualizer import volume_montage, write_png

    from .dataset_mapper import apply_intensity_bounds

    depth, height, width = source.shape[1:]
    zs = np.unique(np.linspace(0, depth - 1, num=min(num_slices, depth)).round().astype(int))
    step = max(1, -(-max(height, width) // max_side))
    labels = open_label_store(store_path, ome=fmt == "ome-zarr")
    sub = (slice(None, None, step), slice(None, None, step))
    image = np.concatenate([source.read((slice(z, z + 1),) + sub) for z in zs], axis=1)
    image = apply_intensity_bounds(image, bounds, source.path)
    lab = np.stack([np.asarray(labels[(int(z),) + sub]) for z in zs])
    write_png(path, volume_montage(image, lab, None, num_slices=len(zs), columns=4))
