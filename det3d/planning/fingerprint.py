"""
A dataset's fingerprint: what a config must be planned from (as nnU-Net and nnDetection plan
theirs). It reads every volume's ground truth and intensities once and summarises:

* ``spacing``: the median voxel spacing ``(z, y, x)`` µm and the anisotropy (largest / smallest);
* ``shape``: volume sizes ``(D, H, W)``, smallest / median / largest per axis;
* ``objects``: the size of every object's bounding box per axis in voxels and µm (percentiles),
  its volume in voxels, objects per volume, the fraction of objects touching another one
  (sharing a face with it) and the objects per class;
* ``intensity``: per channel, percentiles of the foreground and background voxels, and a
  contrast-to-noise ratio (median foreground - median background) / std of the background.

The numbers are in the voxels of the files as they are; :func:`det3d.planning.plan_config`
rescales them to the spacing it plans.
"""

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy import ndimage

from det3d.data.detection_utils import is_sparse_record, load_record_labels
from det3d.data.io import read_volume
from det3d.evaluation.overlap import touching_objects

__all__ = ["dataset_fingerprint", "touching_objects"]

logger = logging.getLogger(__name__)

_PCTS = (0, 5, 25, 50, 75, 95, 100)


def _percentiles(values: Sequence[float]) -> Dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {}
    return {f"p{p}": float(np.percentile(v, p)) for p in _PCTS}


def dataset_fingerprint(
    records: List[dict],
    max_volumes: Optional[int] = None,
    intensity_samples: int = 100_000,
    seed: int = 0,
) -> Dict:
    """
    Args:
        records: dataset records (docs/conventions.md) with ground truth; sparse records (CTC
            per-slice ground truth) count for shapes and intensities but not for objects.
        max_volumes: read at most this many volumes, evenly spread (all by default).
        intensity_samples: voxels sampled per volume and class (fg/bg) for the intensity
            statistics.
        seed: for the voxel sampling.

    Returns:
        dict (JSON-serialisable): ``num_volumes``, ``spacing``, ``shape``, ``objects``,
        ``intensity``, ``classes`` (see the module docstring).

    Raises:
        ValueError: no records, or no object in any volume (naming the first files).
    """
    if not records:
        raise ValueError("dataset_fingerprint: no records")
    if max_volumes and len(records) > max_volumes:
        idx = np.linspace(0, len(records) - 1, max_volumes).round().astype(int)
        records = [records[i] for i in sorted(set(idx.tolist()))]
    rng = np.random.default_rng(seed)
    spacings, shapes = [], []
    sizes_vox, sizes_um, volumes, per_volume = [], [], [], []
    n_touching, n_objects = 0, 0
    class_counts: Dict[int, int] = {}
    fg_samples: Dict[int, list] = {}
    bg_samples: Dict[int, list] = {}
    for rec in records:
        spacing = np.asarray(rec.get("spacing", (1.0, 1.0, 1.0)), dtype=np.float64)
        labels, classes = load_record_labels(rec)
        image = np.asarray(read_volume(rec["file_name"]))
        if image.shape[1:] != labels.shape:
            raise ValueError(
                f"{rec['file_name']}: image (C, D, H, W) {image.shape} does not match its labels "
                f"{labels.shape}"
            )
        spacings.append(spacing)
        shapes.append(labels.shape)
        fg = labels > 0
        for c in range(image.shape[0]):
            for mask, store in ((fg, fg_samples), (~fg, bg_samples)):
                vals = image[c][mask]
                if vals.size > intensity_samples:
                    vals = rng.choice(vals, intensity_samples, replace=False)
                store.setdefault(c, []).append(vals.astype(np.float64))
        if is_sparse_record(rec):
            continue
        # objects: boxes of the ids present, on a compact relabelling 1..n (a large id must not
        # allocate by its value)
        present = np.unique(labels[fg])
        compact = np.zeros(labels.shape, np.int32)
        compact[fg] = np.searchsorted(present, labels[fg]) + 1
        boxes = ndimage.find_objects(compact)
        counts = np.bincount(compact.ravel(), minlength=len(present) + 1)
        touch = set(touching_objects(labels).tolist())
        per_volume.append(len(present))
        for k, inst in enumerate(present.tolist()):
            sl = boxes[k]
            extent = np.array([s.stop - s.start for s in sl], dtype=np.float64)
            sizes_vox.append(extent)
            sizes_um.append(extent * spacing)
            volumes.append(int(counts[k + 1]))
            n_touching += inst in touch
            n_objects += 1
            cls = int(classes.get(inst, 0))
            class_counts[cls] = class_counts.get(cls, 0) + 1
    if n_objects == 0:
        names = [r.get("instance_label_file") or r["file_name"] for r in records[:3]]
        raise ValueError(f"dataset_fingerprint: no object in any volume (e.g. {names})")

    sp = np.median(np.stack(spacings), axis=0)
    sv, su = np.stack(sizes_vox), np.stack(sizes_um)
    shapes_arr = np.array(shapes)
    intensity = {}
    for c in sorted(bg_samples):
        f = np.concatenate(fg_samples[c]) if fg_samples.get(c) else np.zeros(0)
        b = np.concatenate(bg_samples[c])
        cnr = (np.median(f) - np.median(b)) / max(float(b.std()), 1e-12) if f.size else 0.0
        intensity[str(c)] = {
            "foreground": _percentiles(f),
            "background": _percentiles(b),
            "foreground_mean": float(f.mean()) if f.size else float("nan"),
            "background_mean": float(b.mean()),
            "background_std": float(b.std()),
            "contrast_to_noise": float(cnr),
        }
    return {
        "num_volumes": len(records),
        "spacing": {
            "median": sp.tolist(),
            "anisotropy": float(sp.max() / sp.min()),
            "all_equal": bool(np.allclose(np.stack(spacings), spacings[0])),
        },
        "shape": {
            "min": shapes_arr.min(axis=0).tolist(),
            "median": np.median(shapes_arr, axis=0).tolist(),
            "max": shapes_arr.max(axis=0).tolist(),
        },
        "objects": {
            "count": n_objects,
            "per_volume": _percentiles(per_volume),
            "size_voxels": [_percentiles(sv[:, a]) for a in range(sv.shape[1])],
            "size_um": [_percentiles(su[:, a]) for a in range(su.shape[1])],
            "volume_voxels": _percentiles(volumes),
            "touching_fraction": n_touching / n_objects,
            "sizes_voxels_sample": sv[rng.permutation(len(sv))[:2000]].tolist(),
        },
        "classes": {str(k): v for k, v in sorted(class_counts.items())},
        "intensity": intensity,
    }
