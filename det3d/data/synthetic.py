"""
Synthetic microscopy-like volumes with known instances, for tests, demos and smoke training.

Objects (ellipsoids, cuboids, lumpy "blobs", square pyramids) are drawn in *physical* space (micrometres) with
random sizes and orientations, then sampled on the voxel grid of the given spacing, so with an
anisotropic spacing (e.g. z 2 µm, xy 0.5 µm) a sphere spans fewer voxels in z than in y/x.
Each object is evaluated only inside its own bounding region (vectorised numpy).

``touching=False`` places objects by rejection sampling with a gap between their bounding
spheres, so no two instances touch; ``touching=True`` places each new object against an existing
one (they overlap a little and the later one wins), keeping at least half of every earlier object;
a fraction ``0 < touching < 1`` places each new object against an existing one with that
probability and apart from all others otherwise.
Either way the volume holds exactly ``num_objects`` instances, or an error says they do not fit.
"""

import json
import os
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from det3d.utils.file_io import write_json_atomic

from .io import write_volume

__all__ = [
    "make_synthetic_volume",
    "make_synthetic_dataset",
    "SHAPE_CLASSES",
    "KNOWN_SHAPES",
    "GENERATOR_VERSION",
]

# The classes of det3d's first synthetic family (the builtin ``synthetic_*`` splits).
SHAPE_CLASSES = ("ellipsoid", "cuboid", "blob")
# Every kind of object the generator can draw.
KNOWN_SHAPES = SHAPE_CLASSES + ("pyramid",)
# Bump when the generator's output for given parameters changes (builtin datasets regenerate);
# tests/data/test_synthetic.py holds a fingerprint of the output that fails until you do.
# 3: blob bounds from a dense set of directions (version 2 could cut a lobe off at its region).
GENERATOR_VERSION = 3


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    # QR of a Gaussian matrix, sign-fixed, is uniform on O(3); flip to SO(3).
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _shape_inside(
    kind: str, u: np.ndarray, radii: np.ndarray, lumps: Optional[np.ndarray]
) -> np.ndarray:
    """
    Args:
        u: (3, N) points in the object's frame (micrometres).
    Returns:
        (N,) bool: inside the object.
    """
    q = u / radii[:, None]
    if kind == "cuboid":
        return np.abs(q).max(axis=0) <= 1.0
    if kind == "pyramid":
        # square base at q_z = -1, apex at q_z = +1: the half-width shrinks linearly with height
        half = (1.0 - q[2]) / 2.0
        return (np.abs(q[2]) <= 1.0) & (np.maximum(np.abs(q[0]), np.abs(q[1])) <= half)
    r2 = (q**2).sum(axis=0)
    if kind == "ellipsoid":
        return r2 <= 1.0
    # blob: an ellipsoid whose radius varies smoothly with direction
    norm = np.sqrt(r2) + 1e-9
    return norm <= _lobe_radius(lumps, q / norm)


def _random_lumps(rng: np.random.Generator) -> np.ndarray:
    """
    (3, 5) lobes of a blob: angular frequencies (3), phase, amplitude. Low frequencies and 15-30%
    radius swings give lobes a few voxels deep, so a blob is told from an ellipsoid by its shape,
    as a lobed nucleus is told from a round one.
    """
    return np.concatenate(
        [
            rng.normal(0, 2.0, (3, 3)),
            rng.uniform(0, 2 * np.pi, (3, 1)),
            rng.uniform(0.15, 0.3, (3, 1)),
        ],
        axis=1,
    )


def _lobe_radius(lumps: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """A blob's radius factor along each of the (3, N) unit ``directions``: (N,)."""
    freq, phase, amp = lumps[:, :3], lumps[:, 3], lumps[:, 4]
    return 1.0 + (amp[:, None] * np.sin(freq @ directions + phase[:, None])).sum(axis=0)


def _fibonacci_sphere(n: int = 2000) -> np.ndarray:
    """(3, n) unit vectors spread evenly over the sphere (deterministic)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    r = np.sqrt(1.0 - z**2)
    phi = np.pi * (3.0 - np.sqrt(5.0)) * k
    return np.stack([r * np.cos(phi), r * np.sin(phi), z])


_DIRECTIONS = _fibonacci_sphere()


def _lobe_scale(lumps: np.ndarray) -> float:
    """
    Largest radius factor of a blob over all directions (the lobes are smooth, so a dense set of
    directions plus 5% finds it), rather than the loose bound 1 + sum of amplitudes.
    """
    return float(_lobe_radius(lumps, _DIRECTIONS).max() * 1.05)


class _Object:
    def __init__(self, kind, center, radii, rotation, lumps):
        self.kind, self.center, self.radii, self.rotation, self.lumps = (
            kind,
            center,
            radii,
            rotation,
            lumps,
        )
        scale = 1.0 if lumps is None else _lobe_scale(lumps)
        # cuboid and pyramid base corners reach at most sqrt(3) * radius
        corners = kind in ("cuboid", "pyramid")
        self.bound = float(radii.max() * scale * (np.sqrt(3) if corners else 1.0))

    def rasterize(self, shape, spacing) -> Tuple[Tuple[slice, ...], np.ndarray]:
        """Returns the bounding region (slices) and the object's bool mask inside it."""
        spacing = np.asarray(spacing, dtype=np.float64)
        lo = np.floor((self.center - self.bound) / spacing).astype(int)
        hi = np.ceil((self.center + self.bound) / spacing).astype(int) + 1
        lo, hi = np.maximum(lo, 0), np.minimum(hi, shape)
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        if np.any(hi <= lo):
            return region, np.zeros(tuple(np.maximum(hi - lo, 0)), bool)
        # voxel centres (i + 0.5) in micrometres, relative to the object centre
        axes = [(np.arange(a, b) + 0.5) * s - c for a, b, s, c in zip(lo, hi, spacing, self.center)]
        grid = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")])
        u = self.rotation.T @ grid
        mask = _shape_inside(self.kind, u, self.radii, self.lumps)
        return region, mask.reshape(hi - lo)


def _comes_near(labels, region, mask, gap, spacing) -> bool:
    """
    Whether ``mask`` (at ``region``) comes within ``gap`` µm of an object already in ``labels``:
    the exact test, which packs elongated and rotated objects far more densely than bounding
    spheres do.
    """
    margin = [max(int(np.ceil(gap / s)), 1) for s in spacing]
    lo = [max(r.start - m, 0) for r, m in zip(region, margin)]
    hi = [min(r.stop + m, n) for r, m, n in zip(region, margin, labels.shape)]
    grown = np.zeros([b - a for a, b in zip(lo, hi)], bool)
    grown[tuple(slice(r.start - a, r.stop - a) for r, a in zip(region, lo))] = mask
    # an ellipsoidal neighbourhood of radius `gap` µm
    axes = np.ogrid[tuple(slice(-m, m + 1) for m in margin)]
    ball = sum((a * s / max(gap, 1e-9)) ** 2 for a, s in zip(axes, spacing)) <= 1.0
    grown = ndimage.binary_dilation(grown, structure=ball)
    return bool((labels[tuple(slice(a, b) for a, b in zip(lo, hi))][grown] > 0).any())


def make_synthetic_volume(
    shape: Sequence[int] = (32, 64, 64),
    num_objects: int = 8,
    classes: Sequence[str] = SHAPE_CLASSES,
    size_range: Tuple[float, float] = (3.0, 8.0),
    touching: Union[bool, float] = False,
    contrast: Union[float, Tuple[float, float]] = (0.5, 1.0),
    background: float = 0.1,
    noise: str = "gaussian",
    noise_level: float = 0.05,
    blur_sigma: float = 0.0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    gap: float = 1.0,
    dtype: str = "float32",
    channels: int = 1,
    seed: int = 0,
    max_tries: int = 2000,
) -> Tuple[np.ndarray, np.ndarray, Dict[int, int]]:
    """
    Args:
        shape: ``(D, H, W)`` voxels.
        num_objects: exact number of instances.
        classes: object kinds, any of :data:`KNOWN_SHAPES` (``"ellipsoid"``, ``"cuboid"``,
            ``"blob"``, ``"pyramid"``); an instance's class index is its kind's position here.
        size_range: min and max semi-axis (micrometres); each axis drawn independently.
        touching: let objects touch and overlap (later wins) instead of keeping them apart;
            a float in (0, 1) is the probability that a new object is placed against an
            existing one (the others are kept apart from every object).
        contrast: object brightness above background, a value or a ``(min, max)`` range.
        background: background intensity.
        noise: ``"gaussian"`` (std ``noise_level``), ``"poisson"`` (``1 / noise_level`` photons
            per unit intensity), ``"poisson+gaussian"`` (shot noise, then camera read noise of
            std ``noise_level``) or ``"none"``.
        blur_sigma: Gaussian blur in micrometres (converted per axis with ``spacing``).
        spacing: ``(z, y, x)`` micrometres per voxel.
        gap: minimum distance (micrometres) between bounding spheres when not touching.
        dtype: ``"float32"`` or ``"uint16"`` (intensity × 1000, rounded).
        channels: number of image channels (each a differently-noised copy with its own gain).
        seed: everything is drawn from ``np.random.default_rng(seed)``.

    Returns:
        image: ``(C, D, H, W)`` float32 or uint16.
        labels: int32 ``(D, H, W)``, instances numbered 1..num_objects.
        classes: dict instance id -> class index (into ``classes``).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"make_synthetic_volume: shape must be (D, H, W), got {shape}")
    for c in classes:
        if c not in KNOWN_SHAPES:
            raise ValueError(f"make_synthetic_volume: unknown class {c!r}; known: {KNOWN_SHAPES}")
    if not isinstance(touching, bool) and not 0.0 <= float(touching) <= 1.0:
        raise ValueError(
            f"make_synthetic_volume: touching must be a bool or in [0, 1], got {touching}"
        )
    rng = np.random.default_rng(seed)
    spacing = np.asarray(spacing, dtype=np.float64)
    extent = np.asarray(shape) * spacing
    labels = np.zeros(shape, np.int32)
    counts = np.zeros(num_objects + 1, np.int64)
    placed = []  # objects placed so far
    class_of: Dict[int, int] = {}
    # With a touching fraction, whether object k is placed against another is drawn once per
    # object, not per try: drawn per try, crowded volumes would accept mostly touching objects
    # (their tries are not rejected for being close). A bool draws nothing, so touching=True or
    # False gives the output of earlier versions.
    touch_plan = None if isinstance(touching, bool) else rng.random(num_objects) < touching
    tries = 0
    while len(placed) < num_objects:
        tries += 1
        if tries > max_tries:
            raise RuntimeError(
                f"make_synthetic_volume: placed only {len(placed)} of {num_objects} objects in a "
                f"{shape} volume (spacing {tuple(spacing)}) after {max_tries} tries; use fewer or "
                f"smaller objects, a larger volume, or touching=True"
            )
        cls = int(rng.integers(len(classes)))
        kind = classes[cls]
        radii = rng.uniform(size_range[0], size_range[1], size=3)
        lumps = None
        if kind == "blob":
            lumps = _random_lumps(rng)
        rot = _random_rotation(rng)
        obj = _Object(kind, np.zeros(3), radii, rot, lumps)
        # keep the object inside the volume where it fits; else centre it on that axis
        lo = np.minimum(obj.bound, extent / 2)
        hi = np.maximum(extent - obj.bound, extent / 2)
        touch = touching if touch_plan is None else bool(touch_plan[len(placed)])
        if touch and placed:
            other = placed[int(rng.integers(len(placed)))]
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            dist = 0.8 * (min(radii.min(), other.radii.min()) + other.radii.min())
            center = other.center + direction * dist
            if np.any(center < lo) or np.any(center > hi):
                continue
        else:
            center = rng.uniform(lo, hi)
        if (
            touch_plan is None
            and not touch
            and any(np.linalg.norm(center - p.center) < obj.bound + p.bound + gap for p in placed)
        ):
            continue
        obj.center = center
        if touch_plan is not None and not touch:
            # cheap rejection before rasterizing: the centre already lies in an object
            if labels[tuple(np.minimum((center / spacing).astype(int), np.asarray(shape) - 1))]:
                continue
        region, mask = obj.rasterize(shape, spacing)
        if mask.sum() < 8:
            continue
        if touch_plan is not None and not touch and _comes_near(labels, region, mask, gap, spacing):
            continue
        new_id = len(placed) + 1
        sub = labels[region]
        if touching is not False:
            # later wins, but every earlier object keeps at least half of itself
            lost = np.bincount(sub[mask], minlength=num_objects + 1)
            lost[0] = 0
            if np.any(lost[1:] * 2 > counts[1:]):
                continue
            counts -= lost
        sub[mask] = new_id
        counts[new_id] = mask.sum()
        placed.append(obj)
        class_of[new_id] = cls

    image = _render(
        labels,
        class_of,
        num_objects,
        rng,
        contrast,
        background,
        noise,
        noise_level,
        blur_sigma,
        spacing,
        channels,
    )
    if dtype == "uint16":
        image = np.clip(np.round(image * 1000.0), 0, 65535).astype(np.uint16)
    elif dtype != "float32":
        raise ValueError(
            f"make_synthetic_volume: dtype must be 'float32' or 'uint16', got {dtype!r}"
        )
    return image, labels, class_of


def _render(
    labels,
    class_of,
    n,
    rng,
    contrast,
    background,
    noise,
    noise_level,
    blur_sigma,
    spacing,
    channels,
) -> np.ndarray:
    lo, hi = (contrast, contrast) if np.isscalar(contrast) else contrast
    brightness = np.zeros(n + 1, np.float32)
    brightness[1:] = rng.uniform(lo, hi, n)
    clean = background + brightness[labels]
    if blur_sigma > 0:
        clean = ndimage.gaussian_filter(clean, sigma=blur_sigma / spacing)
    out = np.empty((channels,) + labels.shape, np.float32)
    for c in range(channels):
        gain = 1.0 if c == 0 else rng.uniform(0.5, 1.5)
        x = clean * gain
        if noise not in ("gaussian", "poisson", "poisson+gaussian", "none"):
            raise ValueError(
                "make_synthetic_volume: noise must be gaussian|poisson|poisson+gaussian|none, "
                f"got {noise!r}"
            )
        if noise.startswith("poisson"):
            photons = 1.0 / max(noise_level, 1e-6)
            x = rng.poisson(np.maximum(x, 0) * photons) / photons
        if noise.endswith("gaussian"):
            x = x + rng.normal(0.0, noise_level, x.shape)
        out[c] = x
    return out


def make_synthetic_dataset(
    root: str,
    num_volumes: int,
    seed: int = 0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    prefix: str = "vol",
    **volume_kwargs,
) -> Dict:
    """
    Writes ``root/images/<prefix>_NNN.tif``, ``root/labels/<prefix>_NNN.tif`` (instance label
    volumes), ``root/classes/<prefix>_NNN.json`` (instance id -> class index) and
    ``root/meta.json`` (parameters, thing_classes, spacing). Volume ``i`` uses seed
    ``seed * 100003 + i``, so a dataset is reproducible and its volumes differ.

    Args:
        volume_kwargs: passed to :func:`make_synthetic_volume` (shape, num_objects, classes, ...).
            ``num_objects`` may be a ``(min, max)`` pair, drawn per volume.

    Returns:
        the metadata dict written to ``meta.json``.
    """
    classes = tuple(volume_kwargs.pop("classes", SHAPE_CLASSES))
    num_objects = volume_kwargs.pop("num_objects", 8)
    rng = np.random.default_rng(seed)
    for sub in ("images", "labels", "classes"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(num_volumes):
        n = (
            int(rng.integers(num_objects[0], num_objects[1] + 1))
            if isinstance(num_objects, (list, tuple))
            else int(num_objects)
        )
        image, labels, cls = make_synthetic_volume(
            num_objects=n, classes=classes, spacing=spacing, seed=seed * 100003 + i, **volume_kwargs
        )
        name = f"{prefix}_{i:03d}"
        write_volume(os.path.join(root, "images", name + ".tif"), image, spacing=spacing)
        write_volume(os.path.join(root, "labels", name + ".tif"), labels, spacing=spacing)
        write_json_atomic(
            os.path.join(root, "classes", name + ".json"), {str(k): v for k, v in cls.items()}
        )
    meta = {
        "generator_version": GENERATOR_VERSION,
        "num_volumes": num_volumes,
        "seed": seed,
        "spacing": list(map(float, spacing)),
        "thing_classes": list(classes),
        "num_objects": list(num_objects) if isinstance(num_objects, (list, tuple)) else num_objects,
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in volume_kwargs.items()},
    }
    write_json_atomic(os.path.join(root, "meta.json"), meta)
    return meta


def read_synthetic_meta(root: str) -> Optional[Dict]:
    path = os.path.join(root, "meta.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
