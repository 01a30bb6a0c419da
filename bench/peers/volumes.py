"""
What the peers' scripts (run in the scratch venv, without det3d) share: the run manifest that
``bench/peers.py`` writes, reading volumes, and writing label volumes and JSON atomically.

Manifest (JSON)::

    {"family": "toy3d", "spacing": [z, y, x],           # µm, the same for every volume
     "train": [{"name": "vol_000", "image": PATH, "labels": PATH}, ...],
     "test": [{"name": "vol_000", "image": PATH}, ...]}

Images are single-channel ``(D, H, W)`` TIFFs (a leading channel axis of 1 is dropped); label
volumes hold an integer id per object, 0 = background.
"""

import json
import os

import numpy as np
import tifffile


def read_manifest(path: str) -> dict:
    with open(path) as f:
        m = json.load(f)
    for key in ("spacing", "train", "test"):
        if key not in m:
            raise KeyError(f"{path}: the manifest has no {key!r}")
    if len(m["spacing"]) != 3:
        raise ValueError(f"{path}: spacing {m['spacing']} is not (z, y, x)")
    return m


def read_volume(path: str) -> np.ndarray:
    """A single-channel volume ``(D, H, W)`` as float32."""
    a = np.asarray(tifffile.imread(path))
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"{path}: expected a single-channel (D, H, W) volume, got {a.shape}")
    return a.astype(np.float32)


def read_labels(path: str) -> np.ndarray:
    a = np.asarray(tifffile.imread(path))
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or a.dtype.kind not in "iu":
        raise ValueError(f"{path}: expected an integer (D, H, W) label volume, {a.dtype} {a.shape}")
    return a.astype(np.int32)


def write_labels(path: str, labels: np.ndarray) -> None:
    """Writes an int32 label volume atomically (write, then rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.tif"
    tifffile.imwrite(tmp, np.ascontiguousarray(labels, dtype=np.int32))
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Ids 1..N in order of first appearance of the sorted ids (0 stays 0)."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[labels]
