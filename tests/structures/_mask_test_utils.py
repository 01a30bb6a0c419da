"""Label volumes and reference boxes shared by the mask and RLE tests."""

import numpy as np


def random_labels(shape, n_ids, seed):
    """Blocky label volume: random boxes painted in order (later overwrite earlier)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.int32)
    for i in range(1, n_ids + 1):
        lo = [rng.integers(0, s - 1) for s in shape]
        hi = [rng.integers(low + 1, s + 1) for low, s in zip(lo, shape)]
        labels[tuple(slice(a, b) for a, b in zip(lo, hi))] = i
    return labels


def reference_box(mask):
    """Box of a boolean volume by scanning every voxel: [min, max+1) per axis, x first."""
    coords = np.argwhere(mask)
    if len(coords) == 0:
        return [0.0] * (2 * mask.ndim)
    lo = coords.min(0)[::-1]  # array order (z, y, x) -> box order (x, y, z)
    hi = coords.max(0)[::-1] + 1
    return [float(v) for v in list(lo) + list(hi)]
