"""
``SliceFusionRCNN``: the 2.5D Mask R-CNN. A 2D Mask R-CNN (det3d's backbone, RPN and ROI heads
built with ``SPATIAL_DIMS 2``) runs on every z-slice of a volume, seeing the slice's window of
``2k+1`` neighbours through a module of ``SLICE_FUSION_REGISTRY``; the per-slice instances are
linked into 3D objects by :func:`det3d.modeling.link_slice_instances`. It takes and returns what
``GeneralizedRCNN3D`` does, so evaluators, the demo and the model zoo treat both alike.
"""

import logging
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from det3d.config import configurable
from det3d.config.unsupported import check_supported
from det3d.layers import ShapeSpec
from det3d.structures import ImageList, Instances
from det3d.structures.masks import BitMasks

from ..backbone import Backbone, build_backbone
from ..postprocessing import check_voxel_owner, detector_postprocess, instances_to_label_volume
from ..proposal_generator import build_proposal_generator
from ..registries import META_ARCH_REGISTRY
from ..roi_heads import build_roi_heads
from ..slice_fusion import SliceFusion, build_slice_fusion, check_num_slices, slice_window_indices
from ..slice_linking import link_slice_instances
from .rcnn import _original_size, _RCNNBase
from .slice_objects import SliceDetections, linked_objects_to_instances

__all__ = ["SliceFusionRCNN", "slice_targets", "config_2d"]

logger = logging.getLogger(__name__)


def config_2d(cfg):
    """A copy of ``cfg`` with ``MODEL.SPATIAL_DIMS 2``: the config of the model's 2D parts."""
    if cfg.MODEL.SPATIAL_DIMS != 3:
        raise ValueError(
            f"SliceFusionRCNN takes volumes: MODEL.SPATIAL_DIMS must be 3 (its backbone, RPN and "
            f"ROI heads are built in 2D from it), got {cfg.MODEL.SPATIAL_DIMS}"
        )
    cfg2d = cfg.clone()
    cfg2d.defrost()
    cfg2d.MODEL.SPATIAL_DIMS = 2
    return cfg2d


def slice_targets(instances: Instances, z: int) -> Instances:
    """
    The 2D training targets of slice ``z`` of 3D targets: every object with voxels in that slice
    becomes a 2D instance (box tight around its slice mask, its class, the slice mask).
    """
    masks = instances.gt_masks.tensor[:, z]
    keep = masks.flatten(1).any(dim=1)
    bitmasks = BitMasks(masks[keep])
    out = Instances(tuple(instances.image_size[1:]))
    out.gt_boxes = bitmasks.get_bounding_boxes()
    out.gt_classes = instances.gt_classes[keep]
    out.gt_masks = bitmasks
    return out


# GeneralizedRCNN3D's keys that SliceFusionRCNN does not implement: an error at build time.
_3D_ONLY_KEYS = [
    (
        "MODEL.ROI_MASK_HEAD.IMAGE_REFINE_DIM",
        lambda cfg: bool(cfg.MODEL.ROI_MASK_HEAD.IMAGE_REFINE_DIM),
        "masks refined with the image are implemented for GeneralizedRCNN3D only; "
        "SliceFusionRCNN's ROI heads are not handed the target slices' images",
    ),
    (
        "MODEL.FOREGROUND_HEAD.NAME",
        lambda cfg: bool(cfg.MODEL.FOREGROUND_HEAD.NAME),
        "the full-resolution foreground head is implemented for GeneralizedRCNN3D only",
    ),
    (
        "TEST.MASK_FLIP_AXES",
        lambda cfg: bool(cfg.TEST.MASK_FLIP_AXES),
        "mask test-time flips are implemented for GeneralizedRCNN3D only",
    ),
    (
        "TEST.FLIP_OBJECTNESS",
        lambda cfg: bool(cfg.TEST.FLIP_OBJECTNESS),
        "test-time flips are implemented for GeneralizedRCNN3D only",
    ),
    (
        "TEST.TRANSPOSE_XY",
        lambda cfg: bool(cfg.TEST.TRANSPOSE_XY),
        "test-time transposition is implemented for GeneralizedRCNN3D only",
    ),
    (
        "TEST.OUTLINE_REFINE.ENABLED",
        lambda cfg: bool(cfg.TEST.OUTLINE_REFINE.ENABLED),
        "outlines refined with the image are implemented for GeneralizedRCNN3D only",
    ),
    (
        "TEST.COUNTS_REFERENCE_SHAPE",
        lambda cfg: bool(cfg.TEST.COUNTS_REFERENCE_SHAPE),
        "counts scaled with the input's voxels are implemented for GeneralizedRCNN3D only "
        "(SliceFusionRCNN's RPN and ROI heads see one slice at a time)",
    ),
    (
        "TEST.BRIGHTNESS_SPLIT.ENABLED",
        lambda cfg: bool(cfg.TEST.BRIGHTNESS_SPLIT.ENABLED),
        "instances split by brightness are implemented for GeneralizedRCNN3D only",
    ),
    (
        "MODEL.ROI_BOX_HEAD.IOU_HEAD.ENABLED",
        lambda cfg: bool(cfg.MODEL.ROI_BOX_HEAD.IOU_HEAD.ENABLED),
        "the label volume ordered by the box head's IoU estimate is implemented for "
        "GeneralizedRCNN3D only (SliceFusionRCNN links per-slice instances)",
    ),
]


@META_ARCH_REGISTRY.register()
class SliceFusionRCNN(_RCNNBase):
    """
    Input: ``list[dict]`` as for ``GeneralizedRCNN3D``, each ``"image"`` ``(C, D, H, W)``. In
    training each dict is either a slice window from ``SliceDatasetMapper`` (``"image"``
    ``(C, S, H, W)`` with ``S = NUM_SLICES`` and 2D ``"instances"`` of its centre slice) or a
    whole volume with 3D ``"instances"``, of which ``train_slices_per_volume`` target slices are
    drawn (slices without objects weigh ``empty_slice_weight``). Training returns the 2D model's
    losses over the batch of slices.

    Inference (on whole volumes, ``slice_batch_size`` target slices at a time, so memory does not
    grow with depth): each slice's detections are pasted into that slice's label image (as the
    3D model pastes its label volume), the slices are linked into 3D objects, and the output is,
    per volume, ``{"instances", "instance_labels"}`` at the original size: ``pred_boxes``
    ``(N, 6)``, ``scores``, ``pred_classes``, ``pred_masks`` (see
    :func:`linked_objects_to_instances`), and the label volume in which row ``i`` has label
    ``i + 1``. An object's score is the area-weighted mean of its slices' scores and its class
    the class that covers most of its voxels.

    Children: ``fusion``, ``backbone``, ``proposal_generator``, ``roi_heads`` (any can be named
    in ``MODEL.FREEZE_MODULES``).
    """

    @configurable
    def __init__(
        self,
        *,
        fusion: SliceFusion,
        backbone: Backbone,
        proposal_generator: nn.Module,
        roi_heads: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        num_classes: int,
        pad_mode: str = "replicate",
        slice_batch_size: int = 8,
        train_slices_per_volume: int = 4,
        empty_slice_weight: float = 0.1,
        mask_threshold: float = 0.5,
        label_score_threshold: float = 0.0,
        label_overlap_threshold: float = 0.5,
        label_voxel_owner: str = "mask_prob",
        link_iou: float = 0.1,
        link_max_gap: int = 1,
        link_min_depth: int = 1,
        mask_resolution: Sequence[int] = (16, 28, 28),
        freeze: Sequence[str] = (),
    ):
        """
        Args:
            fusion: the slice-fusion module; its ``num_slices`` and ``stage`` decide the window
                and where the fusion acts.
            backbone, proposal_generator, roi_heads: 2D parts.
            pixel_mean, pixel_std: one value per input channel.
            num_classes: foreground classes of the ROI heads.
            pad_mode: window padding at the volume's ends (``MODEL.SLICE_FUSION.PAD_MODE``).
            slice_batch_size: target slices per inference batch (``TEST.SLICE_BATCH_SIZE``).
            train_slices_per_volume, empty_slice_weight: target slices drawn from a whole
                training volume, and the weight of a slice without objects.
            mask_threshold, label_score_threshold, label_overlap_threshold,
            label_voxel_owner: as for ``GeneralizedRCNN3D``, applied to each slice's label image.
            link_iou, link_max_gap, link_min_depth: see :func:`link_slice_instances`.
            mask_resolution: ``(D, H, W)`` of each 3D object's ``pred_masks`` entry.
            freeze: names of children to freeze.
        """
        super().__init__(
            backbone=backbone,
            proposal_generator=proposal_generator,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            ndim=2,
        )
        self.fusion = fusion
        self.roi_heads = roi_heads
        self.num_slices = check_num_slices(fusion.num_slices)
        slice_window_indices(0, self.num_slices, self.num_slices, pad_mode)  # checks pad_mode
        self.pad_mode = pad_mode
        if slice_batch_size < 1:
            raise ValueError(f"TEST.SLICE_BATCH_SIZE must be >= 1, got {slice_batch_size}")
        if train_slices_per_volume < 1:
            raise ValueError(
                "MODEL.SLICE_FUSION.TRAIN_SLICES_PER_VOLUME must be >= 1, got "
                f"{train_slices_per_volume}"
            )
        if not empty_slice_weight >= 0:
            raise ValueError(
                f"MODEL.SLICE_FUSION.EMPTY_SLICE_WEIGHT must be >= 0, got {empty_slice_weight}"
            )
        self.num_classes = num_classes
        self.slice_batch_size = slice_batch_size
        self.train_slices_per_volume = train_slices_per_volume
        self.empty_slice_weight = float(empty_slice_weight)
        self.mask_threshold = mask_threshold
        self.label_score_threshold = label_score_threshold
        self.label_overlap_threshold = label_overlap_threshold
        self.label_voxel_owner = check_voxel_owner(label_voxel_owner)
        self.link_iou = link_iou
        self.link_max_gap = link_max_gap
        self.link_min_depth = link_min_depth
        if len(mask_resolution) != 3 or min(mask_resolution) < 1:
            raise ValueError(
                f"MODEL.SLICE_FUSION.MASK_RESOLUTION must be 3 positive sizes (D, H, W), got "
                f"{list(mask_resolution)}"
            )
        self.mask_resolution = tuple(int(r) for r in mask_resolution)
        self.fusion.init_backbone(self.backbone)
        self.frozen_modules = ()
        from .build import freeze_modules

        freeze_modules(self, freeze)

    @classmethod
    def from_config(cls, cfg):
        check_supported(cfg, _3D_ONLY_KEYS, error=ValueError)
        cfg2d = config_2d(cfg)
        sf = cfg.MODEL.SLICE_FUSION
        check_num_slices(sf.NUM_SLICES)
        channels = len(cfg.MODEL.PIXEL_MEAN)
        if sf.STAGE == "input":
            fusion = build_slice_fusion(cfg2d, {"image": ShapeSpec(channels=channels)})
            backbone = build_backbone(cfg2d, fusion.output_shape()["image"])
        else:
            backbone = build_backbone(cfg2d, ShapeSpec(channels=channels))
            fusion = build_slice_fusion(cfg2d, backbone.output_shape())
        return {
            "fusion": fusion,
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg2d, backbone.output_shape()),
            "roi_heads": build_roi_heads(cfg2d, backbone.output_shape()),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "pad_mode": sf.PAD_MODE,
            "slice_batch_size": cfg.TEST.SLICE_BATCH_SIZE,
            "train_slices_per_volume": sf.TRAIN_SLICES_PER_VOLUME,
            "empty_slice_weight": sf.EMPTY_SLICE_WEIGHT,
            "mask_threshold": cfg.MODEL.ROI_MASK_HEAD.MASK_THRESHOLD,
            "label_score_threshold": cfg.MODEL.ROI_HEADS.LABELS_SCORE_THRESH_TEST,
            "label_overlap_threshold": cfg.MODEL.ROI_HEADS.LABELS_OVERLAP_THRESH_TEST,
            "label_voxel_owner": cfg.MODEL.ROI_HEADS.LABELS_VOXEL_OWNER,
            "link_iou": sf.LINK_IOU,
            "link_max_gap": sf.LINK_MAX_GAP,
            "link_min_depth": sf.LINK_MIN_DEPTH,
            "mask_resolution": sf.MASK_RESOLUTION,
            "freeze": cfg.MODEL.FREEZE_MODULES,
        }

    # ------------------------------------------------------------------------------------- #
    # Inputs
    # ------------------------------------------------------------------------------------- #
    def _volume(self, x: dict, i: int) -> torch.Tensor:
        """The ``(C, D, H, W)`` float image of input ``i``, checked."""
        image = x["image"]
        name = x.get("file_name", f"batched_inputs[{i}]")
        channels = self.pixel_mean.shape[0]
        if image.dim() != 4 or image.shape[0] != channels:
            raise ValueError(
                f"{name}: image has shape {tuple(image.shape)}; SliceFusionRCNN (a 2.5D config, "
                f"MODEL.META_ARCHITECTURE) takes volumes (C={channels}, D, H, W)"
                + (" and was given a 2D image" if image.dim() == 3 else "")
            )
        if image.shape[1] < self.num_slices:
            what = "a 2D image (1 slice)" if image.shape[1] == 1 else f"{image.shape[1]} slices"
            raise ValueError(
                f"{name}: {what} is thinner than the window of "
                f"MODEL.SLICE_FUSION.NUM_SLICES={self.num_slices} of this 2.5D config"
            )
        image = image.to(self.device, dtype=torch.float32)
        if not torch.isfinite(image).all():
            raise ValueError(f"{name}: image contains NaN or Inf voxels")
        return image

    def _slices(self, image: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Normalised slices ``image[:, idx]`` as ``(*idx.shape, C, H, W)``; -1 = a zero slice."""
        c, depth = image.shape[:2]
        zero = image.new_zeros(c, 1, *image.shape[2:])
        padded = torch.cat([image, zero], dim=1)
        flat = torch.where(idx < 0, depth, idx).flatten()
        slices = padded[:, flat].transpose(0, 1)  # (n, C, H, W)
        slices = (slices - self.pixel_mean) / self.pixel_std  # mean, std: (C, 1, 1)
        return slices.reshape(*idx.shape, *slices.shape[1:])

    def _batch(self, slices: List[torch.Tensor]) -> ImageList:
        """Pads ``(..., C, H, W)`` slice stacks to one batch whose H, W suit the backbone."""
        lead = slices[0].shape[:-3]
        flat = [t.reshape(-1, *t.shape[-2:]) for t in slices]
        images = self._pad_batch(flat)
        tensor = images.tensor.view(len(slices), *lead, -1, *images.tensor.shape[-2:])
        return ImageList(tensor, images.image_sizes)

    def _backbone(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        # a frozen backbone needs no graph unless an input-stage fusion before it still learns
        learning_before = self.fusion.stage == "input" and any(
            p.requires_grad for p in self.fusion.parameters()
        )
        if self.training and self.is_frozen("backbone") and not learning_before:
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def _window_features(self, windows: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Fused 2D features of a batch of normalised windows ``(B, S, C, H, W)``."""
        if self.fusion.stage == "input":
            return self._backbone(self.fusion({"image": windows})["image"])
        b, s = windows.shape[:2]
        feats = self._backbone(windows.flatten(0, 1))
        return self.fusion({k: v.view(b, s, *v.shape[1:]) for k, v in feats.items()})

    # ------------------------------------------------------------------------------------- #
    # Training
    # ------------------------------------------------------------------------------------- #
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: see the class docstring.

        Returns:
            training: dict of scalar losses; inference: see :meth:`inference`.
        """
        if not self.training:
            return self.inference(batched_inputs)
        windows, targets = self._training_samples(batched_inputs)
        images = self._batch(windows)
        features = self._window_features(images.tensor)
        images2d = ImageList(images.tensor[:, 0], images.image_sizes)
        return self._training_losses(images2d, features, targets)

    def _training_samples(self, batched_inputs: List[Dict]):
        """The batch's normalised windows (each ``(S, C, H, W)``) and their 2D targets."""
        windows, targets = [], []
        for i, x in enumerate(batched_inputs):
            if "instances" not in x:
                raise KeyError(f"batched_inputs[{i}] has no 'instances': needed for training")
            image = self._volume(x, i)
            inst = x["instances"].to(self.device)
            if len(inst.image_size) == 2:  # a slice window from SliceDatasetMapper
                if image.shape[1] != self.num_slices:
                    raise ValueError(
                        f"{x.get('file_name', f'batched_inputs[{i}]')}: a slice window of "
                        f"{image.shape[1]} slices, MODEL.SLICE_FUSION.NUM_SLICES is "
                        f"{self.num_slices}"
                    )
                windows.append(self._slices(image, torch.arange(self.num_slices)))
                targets.append(inst)
                continue
            depth = image.shape[1]
            for z in self._draw_slices(inst):
                idx = slice_window_indices(z, depth, self.num_slices, self.pad_mode)
                windows.append(self._slices(image, torch.tensor(idx, device=image.device)))
                targets.append(slice_targets(inst, z))
        return windows, targets

    def _draw_slices(self, inst: Instances) -> List[int]:
        """Target slices of a whole training volume, weighted by whether they hold objects."""
        depth = inst.image_size[0]
        occupied = inst.gt_masks.tensor.flatten(2).any(dim=2).any(dim=0).float().cpu()
        weights = occupied + (1.0 - occupied) * self.empty_slice_weight
        if float(weights.sum()) <= 0:
            weights = torch.ones(depth)
        n = min(self.train_slices_per_volume, int((weights > 0).sum()))
        return torch.multinomial(weights, n, replacement=False).tolist()

    # ------------------------------------------------------------------------------------- #
    # Inference
    # ------------------------------------------------------------------------------------- #
    def detect_slices(self, image: torch.Tensor, zs: Sequence[int]) -> List[Instances]:
        """
        The 2D model's detections on target slices ``zs`` of one volume.

        Args:
            image: ``(C, D, H, W)`` raw volume (as the mapper gives it), on the model's device.
            zs: target slices.

        Returns:
            per slice, ``Instances`` of image size ``(H, W)`` (``pred_boxes`` (N, 4), ``scores``,
            ``pred_classes``, ``pred_masks`` (N, M, M)).
        """
        depth = image.shape[1]
        idx = torch.tensor(
            [slice_window_indices(z, depth, self.num_slices, self.pad_mode) for z in zs],
            device=image.device,
        )
        if self.fusion.stage == "input":
            images = self._batch(list(self._slices(image, idx)))
            features = self._window_features(images.tensor)
        else:
            # the backbone runs once on each slice that the batch's windows share
            unique, where = torch.unique(idx, return_inverse=True)
            slices = self._batch(list(self._slices(image, unique)[:, None]))
            feats = self.backbone(slices.tensor[:, 0])
            features = self.fusion({k: v[where] for k, v in feats.items()})
            images = ImageList(slices.tensor[where[:, 0]], [slices.image_sizes[0]] * len(zs))
        images2d = ImageList(images.tensor[:, 0], images.image_sizes)
        proposals, _ = self.proposal_generator(images2d, features, None)
        results, _ = self.roi_heads(images2d, features, proposals, None)
        return results

    def inference(self, batched_inputs: List[Dict], do_postprocess: bool = True):
        """
        Returns:
            With ``do_postprocess`` (default): per input, ``{"instances": Instances,
            "instance_labels": int32 Tensor}`` at the original size (the input's
            "depth"/"height"/"width"). Without: ``list[Instances]`` at the input's size.
        """
        assert not self.training
        processed = []
        for i, x in enumerate(batched_inputs):
            image = self._volume(x, i)
            instances, labels = self.segment_volume(image)
            if not do_postprocess:
                processed.append(instances)
                continue
            out_size = _original_size(x, tuple(image.shape[1:]))
            processed.append(self._postprocess(instances, labels, out_size))
        return processed

    def segment_volume(self, image: torch.Tensor) -> Tuple[Instances, torch.Tensor]:
        """
        Detects on every slice (``slice_batch_size`` at a time), pastes each slice's detections
        into its label image, links the slices and returns the 3D ``Instances`` and label volume
        (row ``i`` = label ``i + 1``) at the image's size.
        """
        depth, height, width = image.shape[1:]
        slice_labels = np.zeros((depth, height, width), np.int32)
        dets = SliceDetections(depth)
        for z0 in range(0, depth, self.slice_batch_size):
            zs = list(range(z0, min(depth, z0 + self.slice_batch_size)))
            for z, r in zip(zs, self.detect_slices(image, zs)):
                r = detector_postprocess(r, (height, width))  # clips boxes to the slice
                lab = instances_to_label_volume(
                    r,
                    (height, width),
                    self.mask_threshold,
                    score_threshold=self.label_score_threshold,
                    overlap_threshold=self.label_overlap_threshold,
                    voxel_owner=self.label_voxel_owner,
                )
                slice_labels[z] = lab = lab.cpu().numpy()
                objectness = r.objectness.cpu().numpy() if r.has("objectness") else None
                dets.set(z, r.scores.cpu().numpy(), r.pred_classes.cpu().numpy(), lab, objectness)
        labels, links = link_slice_instances(
            slice_labels,
            iou_threshold=self.link_iou,
            max_gap=self.link_max_gap,
            min_depth=self.link_min_depth,
            return_links=True,
        )
        del slice_labels
        instances, labels = linked_objects_to_instances(
            labels, links, dets, self.num_classes, self.mask_resolution
        )
        return instances.to(self.device), labels.to(self.device)

    def _postprocess(self, instances: Instances, labels: torch.Tensor, out_size) -> Dict:
        """Rescales boxes and the label volume (nearest voxel) to the original size."""
        out_size = tuple(int(s) for s in out_size)
        if tuple(labels.shape) == out_size:
            return {"instances": instances, "instance_labels": labels}
        scaled = Instances(out_size, **instances.get_fields())
        boxes = instances.pred_boxes.clone()
        factors = [o / n for o, n in zip(out_size[::-1], labels.shape[::-1])]
        boxes.scale(*factors)
        boxes.clip(out_size)
        scaled.pred_boxes = boxes
        # nearest voxel: output voxel centre (j + 0.5) * n / o falls in input voxel floor(.)
        index = [
            ((torch.arange(o, device=labels.device) + 0.5) * n / o).long().clamp(max=n - 1)
            for o, n in zip(out_size, labels.shape)
        ]
        labels = labels[index[0][:, None, None], index[1][None, :, None], index[2][None, None, :]]
        return {"instances": scaled, "instance_labels": labels}
