"""
:class:`SliceDatasetMapper`: one dataset record -> one 2.5D training sample, a target z-slice with
its window of neighbour slices (``DATALOADER.TRAIN_MAPPER "SliceDatasetMapper"``).
"""

import copy
import logging
from typing import Dict, Sequence, Tuple, Union

import numpy as np
import torch

from det3d.config import configurable
from det3d.utils.axes import per_axis

from .dataset_mapper import (
    DATASET_MAPPER_REGISTRY,
    DatasetMapper3D,
    normalize_percentiles,
    percentile_bounds,
)
from .detection_utils import is_sparse_record, label_volume_to_instances, load_record_label_slices
from .io import read_slices, read_volume
from .transforms import AugInput, RandomCrop, apply_augmentations

__all__ = ["SliceDatasetMapper"]

logger = logging.getLogger(__name__)

# rejection sampling of a target slice gives up after this many empty draws and keeps the last
_MAX_DRAWS = 64


@DATASET_MAPPER_REGISTRY.register()
class SliceDatasetMapper(DatasetMapper3D):
    """
    Samples one target slice ``z`` of a record and returns its window of ``S = 2k+1`` slices
    (``MODEL.SLICE_FUSION.NUM_SLICES``; slices beyond the volume per ``PAD_MODE``, ``"zeros"``
    being 0 after normalisation) with the 2D instances of slice ``z``:

    1. the target slice is drawn uniformly among the record's slices (only the annotated ones,
       ``seg_slices``, for Cell Tracking Challenge records with per-slice ground truth), and a
       slice without objects is kept with probability ``empty_slice_weight`` (else drawn again):
       slices are sampled in proportion to 1 (with objects) or ``empty_slice_weight`` (without);
    2. only the window's slices of the image and the target slice of the labels are read
       (memory-mapped TIFF, chunked zarr), so memory does not grow with the volume's depth. The
       intensity normalisation uses the percentiles of the whole volume, as
       :class:`DatasetMapper3D` does at test time; they are computed once per file and cached;
    3. 2D augmentation of the window: in-plane crop to ``INPUT.CROP_SIZE`` (its (H, W) entries;
       cut remnants dropped as in :class:`DatasetMapper3D`), flips (``INPUT.RANDOM_FLIP_AXES``;
       flipping axis 0 reverses the window), 90-degree rotations, intensity changes;
    4. every object in slice ``z`` becomes a 2D instance (box tight around its slice mask,
       class, mask).

    Output dict: ``"image"`` float32 ``(C, S, H, W)``, ``"instances"`` (2D, image size
    ``(H, W)``), ``"slice_index"`` ``z``, ``"file_name"``, ``"image_id"``, ``"height"``,
    ``"width"``, ``"spacing"``. Batches hold ``SOLVER.IMS_PER_BATCH`` such samples. Only for
    training (test with :class:`DatasetMapper3D`, whole volumes); ``INPUT.TARGET_SPACING`` is
    not supported (an error names it).
    """

    trains_on_sparse_records = True

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        num_slices: int = 3,
        pad_mode: str = "replicate",
        empty_slice_weight: float = 0.1,
        crop_size: Union[int, Sequence[int]] = (),
        **kwargs,
    ):
        """
        Args:
            is_train: must be True.
            num_slices, pad_mode: the window (``MODEL.SLICE_FUSION.NUM_SLICES``, ``PAD_MODE``).
            empty_slice_weight: sampling weight of a slice without objects (0: never).
            crop_size: in-plane crop ``(H, W)`` (a ``(D, H, W)`` list drops D); empty: none.
            kwargs: as for :class:`DatasetMapper3D` (augmentations, norm_percentiles, ...).
        """
        from det3d.modeling.slice_fusion import check_num_slices, slice_window_indices

        if not is_train:
            raise ValueError(
                "SliceDatasetMapper samples training slices; test with DatasetMapper3D (whole "
                "volumes)"
            )
        if kwargs.get("target_spacing"):
            raise ValueError(
                "INPUT.TARGET_SPACING is not supported by SliceDatasetMapper (resampling z "
                "changes what a slice is); resample the volumes beforehand"
            )
        if kwargs.get("touching_copies"):
            raise ValueError(
                "INPUT.COPY_PASTE.NUM_TOUCHING is not supported by SliceDatasetMapper (it pastes "
                "into whole volumes, not slice windows); set it to 0"
            )
        if kwargs.get("random_scale"):
            raise ValueError(
                "INPUT.RANDOM_SCALE is not supported by SliceDatasetMapper (zooming z changes what "
                "a slice is); set INPUT.RANDOM_SCALE.RANGE to []"
            )
        super().__init__(is_train, spatial_dims=3, **kwargs)
        self.num_slices = check_num_slices(num_slices)
        slice_window_indices(0, num_slices, num_slices, pad_mode)  # checks pad_mode
        self._window_indices = slice_window_indices
        self.pad_mode = pad_mode
        if not empty_slice_weight >= 0:
            raise ValueError(
                f"MODEL.SLICE_FUSION.EMPTY_SLICE_WEIGHT must be >= 0, got {empty_slice_weight}"
            )
        self.empty_slice_weight = float(empty_slice_weight)
        given = (crop_size > 0) if isinstance(crop_size, int) else len(crop_size) > 0
        self.crop_size = (
            tuple(int(c) for c in per_axis(crop_size, 2, "INPUT.CROP_SIZE")) if given else ()
        )
        self._bounds: Dict[str, list] = {}

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret.pop("spatial_dims")
        sf = cfg.MODEL.SLICE_FUSION
        ret.update(
            num_slices=sf.NUM_SLICES,
            pad_mode=sf.PAD_MODE,
            empty_slice_weight=sf.EMPTY_SLICE_WEIGHT,
        )
        return ret

    def _volume(self, record: dict):
        path = record["file_name"]
        vol = read_volume(path)
        if self.in_channels is not None and vol.shape[0] != self.in_channels:
            raise ValueError(
                f"{path}: image has {vol.shape[0]} channels, INPUT.IN_CHANNELS is "
                f"{self.in_channels}"
            )
        depth = vol.shape[1]
        if depth < self.num_slices:
            raise ValueError(
                f"{path}: "
                + ("a 2D image" if depth == 1 else f"a volume of {depth} slices")
                + f" is thinner than the window of MODEL.SLICE_FUSION.NUM_SLICES={self.num_slices}"
                " of this 2.5D config"
            )
        expected = tuple(int(record[k]) for k in ("depth", "height", "width") if k in record)
        if len(expected) == 3 and tuple(vol.shape[1:]) != expected:
            raise ValueError(
                f"{path}: image is (D, H, W) = {tuple(vol.shape[1:])}, the record says {expected}"
            )
        if path not in self._bounds:
            self._bounds[path] = percentile_bounds(vol, self.norm_percentiles)
        return vol

    def _draw_target(self, record: dict, depth: int) -> Tuple[int, np.ndarray, dict]:
        candidates = (
            [int(z) for z in record["seg_slices"]] if is_sparse_record(record) else range(depth)
        )
        if len(candidates) == 0:
            raise ValueError(f"{record['file_name']}: seg_slices is empty: no slice to train on")
        for _ in range(_MAX_DRAWS):
            z = int(candidates[int(self.rng.integers(len(candidates)))])
            labels, classes = load_record_label_slices(record, [z])
            if labels.any() or self.rng.random() < self.empty_slice_weight:
                break
        return z, labels[0], classes

    def __call__(self, record: dict) -> dict:
        record = copy.copy(record)  # the caller's record is never modified
        path = record["file_name"]
        vol = self._volume(record)
        depth = vol.shape[1]
        z, target, classes = self._draw_target(record, depth)
        idx = self._window_indices(z, depth, self.num_slices, self.pad_mode)
        real = sorted({i for i in idx if i >= 0})
        read = normalize_percentiles(
            read_slices(vol, real), self.norm_percentiles, path, self._bounds[path]
        )
        window = np.zeros((vol.shape[0], self.num_slices) + tuple(vol.shape[2:]), np.float32)
        for s, i in enumerate(idx):
            if i >= 0:
                window[:, s] = read[:, real.index(i)]
        labels = np.zeros(window.shape[1:], np.int32)
        k = self.num_slices // 2
        labels[k] = target
        aug_input = AugInput(window, labels)
        if self.crop_size:
            full_counts = np.bincount(labels.ravel())
            RandomCrop((self.num_slices,) + self.crop_size)(aug_input, self.rng)
            aug_input.labels = self._drop_cut_remnants(aug_input.labels, full_counts)
        apply_augmentations(self.augmentations, aug_input, self.rng)
        lab = np.ascontiguousarray(aug_input.labels[k])
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(aug_input.image, dtype=np.float32)),
            "instances": label_volume_to_instances(lab, classes, lab.shape),
            "slice_index": z,
            "file_name": path,
            "image_id": record.get("image_id"),
            "spacing": tuple(float(s) for s in record.get("spacing", (1.0, 1.0, 1.0))),
            "height": int(vol.shape[2]),
            "width": int(vol.shape[3]),
        }
        return out
