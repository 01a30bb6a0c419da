"""
:class:`DatasetMapper3D`: one dataset record -> one model input dict (docs/conventions.md,
"Model input and output").
"""

import copy
import logging
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from fvcore.common.registry import Registry

from det3d.config import configurable
from det3d.structures.label_volume import compact_labels
from det3d.utils.axes import per_axis

from .detection_utils import is_sparse_record, label_volume_to_instances, load_record_labels
from .io import check_spacing, read_volume
from .transforms import (
    AugInput,
    Augmentation,
    RandomCrop,
    RandomFlip,
    RandomIntensity,
    RandomRotate90XY,
    RandomScale,
    ResampleTransform,
    apply_augmentations,
    check_copy_paste,
    check_mosaic,
    check_scale_range,
    join_volumes,
    paste_touching_copies,
)

__all__ = [
    "DatasetMapper3D",
    "DATASET_MAPPER_REGISTRY",
    "normalize_percentiles",
    "percentile_bounds",
    "apply_intensity_bounds",
    "build_augmentations",
]

logger = logging.getLogger(__name__)

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """
Training mappers, chosen by ``DATALOADER.TRAIN_MAPPER``. Called with ``obj(cfg, is_train)``; the
object maps a dataset record to a model input dict. A mapper whose ``trains_on_sparse_records`` is
True keeps records with per-slice ground truth (``seg_slices``) in the training set.
"""


def percentile_bounds(image: np.ndarray, percentiles: Sequence[float]) -> List[Tuple[float, float]]:
    """
    ``[(p_low, p_high)]`` per channel of a ``(C, ...)`` image (as :func:`normalize_percentiles`
    computes them); empty ``percentiles``: ``[]`` (no scaling).
    """
    if not percentiles:
        return []
    lo_p, hi_p = percentiles
    return [
        tuple(float(v) for v in np.percentile(np.asarray(image[c]), [lo_p, hi_p]))
        for c in range(image.shape[0])
    ]


def normalize_percentiles(
    image: np.ndarray,
    percentiles: Sequence[float],
    name: str = "image",
    bounds: Optional[Sequence[Tuple[float, float]]] = None,
) -> np.ndarray:
    """
    Per channel ``(x - p_low) / (p_high - p_low)`` in float32; a constant channel becomes
    ``x - p_low`` (zeros). Raises ValueError (naming ``name``) on NaN/Inf voxels.

    Args:
        bounds: per channel ``(p_low, p_high)`` to use instead of the image's own (e.g. those of
            the whole volume, for a few of its slices; see :func:`percentile_bounds`).
    """
    out = np.asarray(image).astype(np.float32)  # always a copy we may write to
    _check_finite(out, name)
    if not percentiles:
        return out
    return _scale(out, bounds if bounds is not None else percentile_bounds(out, percentiles))


def apply_intensity_bounds(image: np.ndarray, bounds: Sequence[Tuple], name: str = "image"):
    """
    ``(x - lo) / (hi - lo)`` per channel (``x - lo`` where ``hi <= lo``) with bounds from
    :func:`percentile_bounds`, in float32; ``image`` (any part of a volume) is converted, or
    changed in place when it is float32 already. Same arithmetic for a tile as for the whole.
    """
    out = image if image.dtype == np.float32 else image.astype(np.float32)
    _check_finite(out, name)
    return _scale(out, bounds)


def _scale(out: np.ndarray, bounds: Sequence[Tuple]) -> np.ndarray:
    for c, (lo, hi) in enumerate(bounds):
        out[c] -= lo
        if hi > lo:
            out[c] /= hi - lo
    return out


def _check_finite(image: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(image)):
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise ValueError(f"{name}: {bad} NaN/Inf voxels in the image")


def build_augmentations(cfg, is_train: bool) -> List[Augmentation]:
    """The training augmentations after cropping, from ``cfg.INPUT.*`` (empty for testing)."""
    if not is_train:
        return []
    ndim = cfg.MODEL.SPATIAL_DIMS
    augs: List[Augmentation] = []
    flip_axes = [a for a in cfg.INPUT.RANDOM_FLIP_AXES if a < ndim]
    if flip_axes:
        augs.append(RandomFlip(flip_axes))
    if cfg.INPUT.ROTATE90_XY:
        augs.append(RandomRotate90XY())
    augs.append(
        RandomIntensity(
            cfg.INPUT.INTENSITY_SCALE,
            cfg.INPUT.INTENSITY_SHIFT,
            cfg.INPUT.GAMMA,
            cfg.INPUT.NOISE_STD,
        )
    )
    return augs


@DATASET_MAPPER_REGISTRY.register()
class DatasetMapper3D:
    """
    Reads a record's volume and ground truth and turns them into a model input:

    1. read the image ``(C, D, H, W)`` (memory-mapped / lazy where possible), check the channel
       count and NaN/Inf voxels, normalise each channel by its percentiles;
    2. optionally resample to ``target_spacing`` (image linear, labels nearest); the output's
       ``"depth"/"height"/"width"`` stay the record's ORIGINAL size, so the model rescales its
       predictions back to the original grid;
    3. training: read the labels (``instance_label_file``, ``annotations`` RLEs), with
       probability ``random_scale_prob`` zoom by a factor drawn from ``random_scale``
       (``INPUT.RANDOM_SCALE``, :class:`~det3d.data.transforms.RandomScale`; without a
       ``crop_size`` a zoomed volume is then cropped or padded back to its own shape), randomly
       crop to ``crop_size`` (padding axes that are shorter, image 0; the crop contains a random
       instance voxel with probability 0.5), touching copy-paste (``INPUT.COPY_PASTE``,
       :func:`~det3d.data.transforms.paste_touching_copies`), then flips / 90-degree xy
       rotations / intensity changes.
       Instances cut by the crop keep their visible part; a cut remnant with fewer than
       ``crop_min_visible_fraction`` of the instance's voxels (counted on the whole volume) or
       fewer than ``min_instance_voxels`` voxels is dropped from the targets: its voxels stay in
       the image and become background (label 0) in the targets;
    4. targets ``Instances`` (``gt_boxes`` tight around ``gt_masks``, ``gt_classes``).

    With ``mosaic_volumes`` > 1 (``INPUT.MOSAIC``), the training loader calls :meth:`map_mosaic`
    with that many records: each goes through steps 1-3 on its own, then they are joined along a
    random axis of ``mosaic_axes`` (:func:`~det3d.data.transforms.join_volumes`) into one input.

    Randomness: all draws come from ``self.rng``; :meth:`reseed` (called by the training loader
    before each sample with a seed derived from the loader seed and the sample's position) makes
    batches reproducible. Records with sparse ground truth (``seg_slices``) cannot be used for
    training (their unannotated slices are unknown, not background): the mapper raises, and the
    training loader drops them.

    Output dict: ``"image"`` float32 tensor ``(C, D, H, W)`` (``(C, H, W)`` with 2 spatial dims),
    ``"instances"`` (training), ``"depth"``, ``"height"``, ``"width"`` (original), ``"file_name"``,
    ``"image_id"``, ``"spacing"`` (of the returned image: the target spacing when resampled).
    """

    trains_on_sparse_records = False  # see DATASET_MAPPER_REGISTRY

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: Sequence[Augmentation] = (),
        norm_percentiles: Sequence[float] = (1.0, 99.8),
        target_spacing: Sequence[float] = (),
        crop_size: Union[int, Sequence[int]] = (),
        crop_min_visible_fraction: float = 0.25,
        min_instance_voxels: int = 8,
        in_channels: Optional[int] = None,
        spatial_dims: int = 3,
        touching_copies: int = 0,
        copy_ring: int = 2,
        copy_min_keep: float = 1.0,
        mosaic_volumes: int = 1,
        mosaic_axes: Sequence[int] = (),
        random_scale: Sequence[float] = (),
        random_scale_prob: float = 0.5,
        seed: int = 0,
    ):
        self.is_train = is_train
        self.augmentations = list(augmentations)
        self.norm_percentiles = tuple(norm_percentiles)
        self.target_spacing = (
            check_spacing(target_spacing, "INPUT.TARGET_SPACING (target_spacing)")
            if len(target_spacing)
            else ()
        )
        self.crop_min_visible_fraction = float(crop_min_visible_fraction)
        self.min_instance_voxels = int(min_instance_voxels)
        self.in_channels = in_channels
        if spatial_dims not in (2, 3):
            raise ValueError(f"DatasetMapper3D: spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        # an int is one size for every axis; [] or 0: no crop
        crop = (
            per_axis(crop_size, spatial_dims, "DatasetMapper3D crop_size (INPUT.CROP_SIZE)")
            if _given(crop_size)
            else ()
        )
        self.crop_size = tuple(int(c) for c in crop)
        keys = tuple(f"INPUT.COPY_PASTE.{k}" for k in ("NUM_TOUCHING", "RING", "MIN_KEEP"))
        check_copy_paste(touching_copies, copy_ring, copy_min_keep, names=keys)
        self.touching_copies = int(touching_copies)
        self.copy_ring = int(copy_ring)
        self.copy_min_keep = float(copy_min_keep)
        keys = ("INPUT.MOSAIC.NUM_VOLUMES", "INPUT.MOSAIC.AXES")
        check_mosaic(mosaic_volumes, mosaic_axes, spatial_dims, names=keys)
        self.mosaic_volumes = int(mosaic_volumes) if is_train else 1
        self.mosaic_axes = [int(a) for a in mosaic_axes] or list(range(spatial_dims))
        keys = ("INPUT.RANDOM_SCALE.RANGE", "INPUT.RANDOM_SCALE.PROB")
        check_scale_range(random_scale, random_scale_prob, names=keys)
        self.random_scale = (
            RandomScale(random_scale, random_scale_prob) if len(random_scale) else None
        )
        self.reseed(seed)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "is_train": is_train,
            "augmentations": build_augmentations(cfg, is_train),
            "norm_percentiles": cfg.INPUT.NORM_PERCENTILES,
            "target_spacing": cfg.INPUT.TARGET_SPACING,
            "crop_size": cfg.INPUT.CROP_SIZE if is_train else (),
            "crop_min_visible_fraction": cfg.INPUT.CROP_MIN_VISIBLE_FRACTION,
            "min_instance_voxels": cfg.INPUT.MIN_INSTANCE_VOXELS,
            "in_channels": cfg.INPUT.IN_CHANNELS,
            "spatial_dims": cfg.MODEL.SPATIAL_DIMS,
            "touching_copies": cfg.INPUT.COPY_PASTE.NUM_TOUCHING,
            "copy_ring": cfg.INPUT.COPY_PASTE.RING,
            "copy_min_keep": cfg.INPUT.COPY_PASTE.MIN_KEEP,
            "mosaic_volumes": cfg.INPUT.MOSAIC.NUM_VOLUMES,
            "mosaic_axes": cfg.INPUT.MOSAIC.AXES,
            "random_scale": cfg.INPUT.RANDOM_SCALE.RANGE,
            "random_scale_prob": cfg.INPUT.RANDOM_SCALE.PROB,
            "seed": max(cfg.SEED, 0),
        }

    def reseed(self, seed: int) -> None:
        """Resets the random generator all augmentations draw from."""
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------------------------- #
    def _read_image(self, record: dict) -> np.ndarray:
        path = record["file_name"]
        vol = read_volume(path)
        if self.in_channels is not None and vol.shape[0] != self.in_channels:
            raise ValueError(
                f"{path}: image has {vol.shape[0]} channels, INPUT.IN_CHANNELS is {self.in_channels}"
            )
        expected = tuple(int(record[k]) for k in ("depth", "height", "width") if k in record)
        if len(expected) == 3 and tuple(vol.shape[1:]) != expected:
            raise ValueError(
                f"{path}: image is (D, H, W) = {tuple(vol.shape[1:])}, the record says {expected}"
            )
        return normalize_percentiles(np.asarray(vol), self.norm_percentiles, path)

    def _to_spatial_dims(self, image: np.ndarray, labels: Optional[np.ndarray], path: str):
        if self.spatial_dims == 3:
            return image, labels
        if image.shape[1] != 1:
            raise ValueError(f"{path}: SPATIAL_DIMS is 2 but the image has depth {image.shape[1]}")
        return image[:, 0], (labels[0] if labels is not None else None)

    def _drop_cut_remnants(self, labels: np.ndarray, full_counts: np.ndarray) -> np.ndarray:
        visible = np.bincount(labels.ravel(), minlength=full_counts.size)[: full_counts.size]
        cut = (visible > 0) & (visible < full_counts)
        drop = cut & (
            (visible < self.crop_min_visible_fraction * full_counts)
            | (visible < self.min_instance_voxels)
        )
        drop[0] = False
        if drop.any():
            labels = np.where(drop[labels], 0, labels).astype(labels.dtype)
        return labels

    def __call__(self, record: dict) -> dict:
        record = copy.copy(record)  # the caller's record is never modified
        aug_input, classes, spacing = self._augmented(record)
        return self._output(record, aug_input.image, aug_input.labels, classes, spacing)

    def map_mosaic(self, records: Sequence[dict]) -> dict:
        """
        One training input from several records joined side by side (``INPUT.MOSAIC``): each is
        read and augmented on its own, then they are joined, in the order given, along an axis
        drawn from ``mosaic_axes``. The output's ``"depth"``, ``"height"`` and ``"width"`` are the
        joined input's; ``"file_name"`` and ``"image_id"`` are the first record's, and
        ``"mosaic"`` lists every record's file name.
        """
        if not self.is_train:
            raise ValueError("DatasetMapper3D.map_mosaic: mosaics are for training only")
        parts = [self._augmented(r) for r in records]  # reads the records, writes none
        spacings = {p[2] for p in parts}
        if len(spacings) > 1:
            raise ValueError(
                f"INPUT.MOSAIC: volumes of different spacing cannot be joined "
                f"({[r['file_name'] for r in records]}: {[p[2] for p in parts]}); set "
                f"INPUT.TARGET_SPACING to resample them to one"
            )
        axis = int(self.mosaic_axes[int(self.rng.integers(len(self.mosaic_axes)))])
        image, labels, classes = join_volumes(
            [p[0].image for p in parts], [p[0].labels for p in parts], [p[1] for p in parts], axis
        )
        record = copy.copy(records[0])
        for k, n in zip(("depth", "height", "width")[3 - self.spatial_dims :], labels.shape):
            record[k] = int(n)
        out = self._output(record, image, labels, classes, parts[0][2])
        out["mosaic"] = [r["file_name"] for r in records]
        return out

    def _augmented(self, record: dict):
        """Steps 1-3 of the class docstring: (AugInput, id -> class map or None, spacing)."""
        path = record["file_name"]
        image = self._read_image(record)
        labels = classes = None
        if self.is_train:
            if is_sparse_record(record):
                raise ValueError(
                    f"{path}: ground truth covers only z-slices {record['seg_slices']}; such records "
                    f"are for evaluation, not training"
                )
            labels, classes = load_record_labels(record)
            # ids from other tools can be huge (2**31 - 1): count and box on 1..N, not by max id
            labels, ids = compact_labels(labels)
            classes = {k + 1: int(classes.get(int(i), 0)) for k, i in enumerate(ids)}
            if labels.shape != image.shape[1:]:
                raise ValueError(
                    f"Shape mismatch: image {path} is {image.shape[1:]}, labels "
                    f"{record.get('instance_label_file', 'annotations')} are {labels.shape}"
                )
        image, labels = self._to_spatial_dims(image, labels, path)
        ndim = self.spatial_dims
        spacing = check_spacing(record.get("spacing", (1.0, 1.0, 1.0)), f"{path} (record)")
        aug_input = AugInput(image, labels)
        if self.target_spacing:
            target = self.target_spacing[-ndim:]
            zoom = [s / t for s, t in zip(spacing[-ndim:], target)]
            aug_input.transform(ResampleTransform(image.shape[1:], zoom))
            spacing = spacing[: 3 - ndim] + tuple(target)
        if self.is_train:
            crop = self.crop_size
            if self.random_scale is not None:
                shape = aug_input.spatial_shape
                self.random_scale(aug_input, self.rng)
                if not crop and aug_input.spatial_shape != shape:
                    crop = shape  # the batch's shape and a step's cost stay what they were
            if crop:
                full_counts = np.bincount(aug_input.labels.ravel())
                RandomCrop(crop)(aug_input, self.rng)
                aug_input.labels = self._drop_cut_remnants(aug_input.labels, full_counts)
            if self.touching_copies:
                aug_input.image, aug_input.labels, classes, _ = paste_touching_copies(
                    aug_input.image,
                    aug_input.labels,
                    classes,
                    self.rng,
                    self.touching_copies,
                    ring=self.copy_ring,
                    min_keep=self.copy_min_keep,
                )
            apply_augmentations(self.augmentations, aug_input, self.rng)
        return aug_input, classes, spacing

    def _output(self, record, image, labels, classes, spacing) -> dict:
        """Step 4: the model input dict."""
        path = record["file_name"]
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "file_name": path,
            "image_id": record.get("image_id"),
            "spacing": spacing,
        }
        for k in ("depth", "height", "width"):
            if k in record:
                out[k] = int(record[k])
        if self.spatial_dims == 2:
            out.pop("depth", None)
        if self.is_train:
            lab = np.ascontiguousarray(labels)
            out["instances"] = label_volume_to_instances(lab, classes, lab.shape)
        return out


def _given(value) -> bool:
    """A per-axis size that is set: a positive int or a non-empty list."""
    return value > 0 if isinstance(value, int) else len(value) > 0
