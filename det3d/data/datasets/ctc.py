"""
Cell Tracking Challenge (CTC) folders::

    <root>/<seq>/tTTT.tif                      images (3- or 4-digit time index)
    <root>/<seq>_GT/SEG/man_segTTT.tif         full ground truth of time point TTT
    <root>/<seq>_GT/SEG/man_seg_TTT_ZZZ.tif    ground truth of z-slice ZZZ only (3D data sets)
    <root>/<seq>_ST/SEG/...                    silver truth, same names (gt="ST")

Records (docs/conventions.md) also carry ``sequence`` and ``frame``. A time point with a full label
volume gets ``instance_label_file``. A time point annotated only on some z-slices gets
``seg_slices`` (sorted z indices) and ``seg_slice_files`` (the matching 2D files): its label
volume (:func:`det3d.data.detection_utils.load_record_labels`) holds those slices and zeros
elsewhere, and the zeros mean *unknown*, not background. So:

* training: such records are dropped by ``get_detection_dataset_dicts(filter_empty=True)`` and
  refused by ``DatasetMapper3D(is_train=True)``;
* evaluation: evaluators compare predictions with the ground truth on the ``seg_slices`` only
  (the CTC SEG measure does exactly this).

Where a time point has both, the full volume is used.
"""

import logging
import os
import re
from typing import Dict, List, Optional, Sequence, Union

from ..catalog import DatasetCatalog, MetadataCatalog
from ..io import check_spacing, read_spacing, volume_shape

__all__ = ["load_ctc_dataset", "register_ctc_dataset"]

logger = logging.getLogger(__name__)

_IMAGE_RE = re.compile(r"^t(\d{3,4})\.tiff?$")
_FULL_RE = re.compile(r"^man_seg(\d{3,4})\.tiff?$")
_SLICE_RE = re.compile(r"^man_seg_(\d{3,4})_(\d{3,4})\.tiff?$")
_GT_FOLDERS = {"SEG": "_GT", "GT": "_GT", "ST": "_ST"}


def _gt_dir(root: str, sequence: str, gt: str) -> str:
    if gt not in _GT_FOLDERS:
        raise ValueError(
            f"load_ctc_dataset: gt must be one of {sorted(_GT_FOLDERS)} or None, got {gt!r}"
        )
    return os.path.join(root, sequence + _GT_FOLDERS[gt], "SEG")


def load_ctc_dataset(
    root: str,
    sequence: str,
    spacing: Optional[Sequence[float]] = None,
    gt: Optional[str] = "SEG",
    only_annotated: bool = True,
    image_id_offset: int = 0,
) -> List[dict]:
    """
    Args:
        root: the data set folder (holding ``01``, ``01_GT``, ...).
        sequence: e.g. ``"01"``.
        spacing: ``(z, y, x)`` µm; default: the first image's metadata, else 1.
        gt: ``"SEG"`` (gold truth, ``<seq>_GT/SEG``), ``"ST"`` (silver truth) or None (images only).
        only_annotated: keep only time points with ground truth (ignored when ``gt`` is None).

    Returns:
        list[dict]: records ordered by time point.
    """
    image_dir = os.path.join(root, sequence)
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"{image_dir}: no such CTC sequence folder")
    images: Dict[int, str] = {}
    for fn in sorted(os.listdir(image_dir)):
        m = _IMAGE_RE.match(fn)
        if m:
            images[int(m.group(1))] = os.path.join(image_dir, fn)
    if not images:
        raise FileNotFoundError(f"{image_dir}: no tTTT.tif images")
    full: Dict[int, str] = {}
    slices: Dict[int, Dict[int, str]] = {}
    if gt is not None:
        gt_dir = _gt_dir(root, sequence, gt)
        if not os.path.isdir(gt_dir):
            raise FileNotFoundError(f"{gt_dir}: no such CTC ground-truth folder")
        for fn in sorted(os.listdir(gt_dir)):
            m = _FULL_RE.match(fn)
            if m:
                full[int(m.group(1))] = os.path.join(gt_dir, fn)
                continue
            m = _SLICE_RE.match(fn)
            if m:
                slices.setdefault(int(m.group(1)), {})[int(m.group(2))] = os.path.join(gt_dir, fn)
        orphans = sorted((set(full) | set(slices)) - set(images))
        if orphans:
            raise FileNotFoundError(
                f"{gt_dir}: ground truth for time points {orphans[:5]} without images in {image_dir}"
            )
    if spacing is None:
        spacing = read_spacing(next(iter(images.values()))) or (1.0, 1.0, 1.0)
    spacing = check_spacing(spacing, f"{image_dir} (spacing)")
    records = []
    for t, image_file in images.items():
        has_gt = t in full or t in slices
        if gt is not None and only_annotated and not has_gt:
            continue
        c, d, h, w = volume_shape(image_file)
        record = {
            "file_name": image_file,
            "image_id": image_id_offset + len(records),
            "depth": d,
            "height": h,
            "width": w,
            "spacing": spacing,
            "sequence": sequence,
            "frame": t,
        }
        if t in full:
            lshape = volume_shape(full[t])
            if tuple(lshape) != (1, d, h, w):
                raise ValueError(
                    f"Shape mismatch: labels {full[t]} are {tuple(lshape)}, image {image_file} is "
                    f"{(c, d, h, w)}"
                )
            record["instance_label_file"] = full[t]
        elif t in slices:
            zs = sorted(slices[t])
            for z in zs:
                sshape = volume_shape(slices[t][z])
                if tuple(sshape) != (1, 1, h, w) or not 0 <= z < d:
                    raise ValueError(
                        f"{slices[t][z]}: slice ground truth of shape {tuple(sshape)} at z={z} does "
                        f"not fit image {image_file} of (D, H, W) = {(d, h, w)}"
                    )
            record["seg_slices"] = zs
            record["seg_slice_files"] = [slices[t][z] for z in zs]
        records.append(record)
    return records


def register_ctc_dataset(
    name: str,
    root: str,
    sequences: Union[str, Sequence[str]] = ("01", "02"),
    spacing: Optional[Sequence[float]] = None,
    gt: Optional[str] = "SEG",
    metadata: Optional[dict] = None,
) -> None:
    """
    Registers the records of one or more sequences of a CTC data set as ``name``; metadata
    ``thing_classes=["cell"]``, ``evaluator_type="ctc"``.
    """
    if isinstance(sequences, str):
        sequences = [sequences]
    if spacing is not None:  # refused at registration, not at the first use
        spacing = check_spacing(spacing, f"dataset {name!r}")

    def load():
        records = []
        for seq in sequences:
            records.extend(load_ctc_dataset(root, seq, spacing, gt, image_id_offset=len(records)))
        return records

    DatasetCatalog.register(name, load)
    metadata = dict(metadata or {})
    metadata.setdefault("thing_classes", ["cell"])
    metadata.setdefault("evaluator_type", "ctc")
    if spacing is not None:
        metadata.setdefault("spacing", tuple(float(s) for s in spacing))
    MetadataCatalog.get(name).set(root=root, sequences=list(sequences), **metadata)
