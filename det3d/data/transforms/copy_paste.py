"""
Touching copy-paste: more touching objects to train on.

Where objects touch, a detector has to tell where one ends and its neighbour begins, and a
training set holds few such pairs (``toy3d``: about one object in five touches another; a model
trained on it finds 74% of its own training split's touching objects and all its isolated ones).
Simple Copy-Paste (Ghiasi et al., CVPR 2021) pastes objects from one training image into
another; here a copy of an object of the volume is pasted against another object of the same
volume, so that each paste adds a touching pair.

A copy carries the object's voxels and a ring of ``ring`` voxels of the background around it (the
object's blurred edge and its noise), both taken from the same volume: the background the copy
lands on has the same level, noise and normalisation. The copy is slid from the centre of a
randomly drawn object outwards, along a random direction, to the first place where every object
it covers keeps at least a fraction ``keep`` of its voxels, ``keep`` drawn per copy between
``min_keep`` and 1: a copy lies on top of what it covers (Simple Copy-Paste's occlusion, and how
objects that touch are drawn in the ``toy3d`` family: the later one whole, the earlier one keeping
at least half of itself); with ``keep`` 1 it only meets its neighbour face to face. It is kept if
it then covers or shares a face with an object (6-connectivity in 3D, as
:func:`det3d.evaluation.overlap.touching_objects`). Its ring never overwrites an object's voxels.
"""

from typing import Dict, Tuple

import numpy as np
from scipy import ndimage

__all__ = ["check_copy_paste", "paste_touching_copies"]


def check_copy_paste(
    num_copies: int,
    ring: int,
    min_keep: float,
    names: Tuple[str, str, str] = ("num_copies", "ring", "min_keep"),
) -> None:
    """
    Raises ValueError naming the value (by ``names``: the arguments', or a config's keys) unless
    ``num_copies`` and ``ring`` are >= 0 and ``min_keep`` is in [0.5, 1].
    """
    for name, value in zip(names[:2], (num_copies, ring)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if not 0.5 <= float(min_keep) <= 1.0:
        raise ValueError(f"{names[2]} must be in [0.5, 1], got {min_keep!r}")


def paste_touching_copies(
    image: np.ndarray,
    labels: np.ndarray,
    classes: Dict[int, int],
    rng: np.random.Generator,
    num_copies: int,
    ring: int = 2,
    min_keep: float = 1.0,
    tries: int = 8,
) -> Tuple[np.ndarray, np.ndarray, Dict[int, int], int]:
    """
    Pastes up to ``num_copies`` copies of objects of the volume, each against another object.

    Args:
        image: ``(C, *spatial)``.
        labels: int ``(*spatial)`` instance ids, 0 = background.
        classes: instance id -> category index.
        rng: the generator every draw comes from.
        num_copies: copies to paste (fewer where no place is found in ``tries`` draws each).
        ring: background voxels around the object that travel with it (its blurred edge).
        min_keep: the least fraction of its voxels an object a copy covers keeps (0.5-1; 1: copies
            cover nothing).
        tries: draws of (source, neighbour, direction) per copy.

    Returns:
        (image, labels, classes, number pasted): new arrays and dict when anything was pasted;
        the inputs are never modified. A copy's id is the largest id + 1 and its class the
        source's. Sources are objects that do not reach the volume's border (a crop's cut
        remnant is not an object's shape); a source an earlier copy covered part of is copied
        as it is now.
    """
    check_copy_paste(num_copies, ring, min_keep)
    if tries < 1:
        raise ValueError(f"paste_touching_copies: tries must be >= 1, got {tries}")
    if tuple(image.shape[1:]) != tuple(labels.shape):
        raise ValueError(
            f"paste_touching_copies: image {image.shape} and labels {labels.shape} differ in shape"
        )
    boxes = ndimage.find_objects(labels) if num_copies and labels.size else []
    ids = [i + 1 for i, b in enumerate(boxes) if b is not None]
    shape = np.asarray(labels.shape)
    sources = [i for i in ids if _inside(boxes[i - 1], shape)]
    if not sources:
        return image, labels, classes, 0
    image, labels, classes = image.copy(), labels.copy(), dict(classes)
    face = ndimage.generate_binary_structure(labels.ndim, 1)
    next_id = int(labels.max()) + 1
    # voxels per id: as drawn (what "keeps" is a fraction of) and now
    full = np.bincount(labels.ravel(), minlength=next_id + num_copies).astype(np.int64)
    now = full.copy()
    pasted = 0
    for _ in range(num_copies):
        for _ in range(tries):
            src = int(rng.choice(sources))
            anchor = int(rng.choice(ids))
            direction = rng.normal(size=labels.ndim)
            direction /= max(float(np.linalg.norm(direction)), 1e-6)
            keep = float(rng.uniform(min_keep, 1.0)) if min_keep < 1.0 else 1.0
            if _paste_one(
                image, labels, boxes, src, anchor, direction, next_id, ring, face, keep, full, now
            ):
                classes[next_id] = int(classes.get(src, 0))
                next_id += 1
                pasted += 1
                break
    return image, labels, classes, pasted


def _inside(box, shape: np.ndarray) -> bool:
    return all(s.start > 0 and s.stop < n for s, n in zip(box, shape))


def _paste_one(
    image, labels, boxes, src, anchor, direction, new_id, ring, face, keep, full, now
) -> bool:
    """
    Slides a copy of ``src`` from ``anchor``'s centre along ``direction``; pastes in place where
    every object it covers keeps ``keep`` of its ``full`` voxels (``now``: their voxels left).
    """
    shape = np.asarray(labels.shape)
    lo = np.maximum([s.start - ring for s in boxes[src - 1]], 0)
    hi = np.minimum([s.stop + ring for s in boxes[src - 1]], shape)
    region = tuple(slice(a, b) for a, b in zip(lo, hi))
    local = labels[region]
    mask = local == src
    # the ring: background around the object, not a neighbour's voxels
    halo = ndimage.binary_dilation(mask, face, iterations=ring) & (local == 0) if ring else None
    values = image[(slice(None),) + region].copy()
    src_centre = np.array([c.mean() for c in np.nonzero(mask)]) + lo
    anchor_box = boxes[anchor - 1]
    anchor_centre = np.array([(s.start + s.stop - 1) / 2 for s in anchor_box])
    size = hi - lo
    reach = int(
        np.ceil(np.linalg.norm(size) + np.linalg.norm([s.stop - s.start for s in anchor_box]))
    )
    for t in range(reach + 1):
        start = lo + np.round(anchor_centre + t * direction - src_centre).astype(int)
        if (start < 0).any() or (start + size > shape).any():
            return False  # slid out of the volume before finding room
        dest = tuple(slice(a, a + n) for a, n in zip(start, size))
        there = labels[dest]
        covered = there[mask]
        lost = np.bincount(covered, minlength=now.size)
        lost[0] = 0
        if (now - lost < keep * full)[lost > 0].any():
            continue
        if not lost.any():
            # covers nothing: it must share a face with what it lands beside
            contact = ndimage.binary_dilation(mask, face) & ~mask
            if not (there[contact] != 0).any():
                return False  # room, but against nothing: no touching pair
        write = mask | (halo & (there == 0)) if halo is not None else mask
        image[(slice(None),) + dest][:, write] = values[:, write]
        there[mask] = new_id
        now -= lost
        full[new_id] = now[new_id] = int(mask.sum())
        return True
    return False
