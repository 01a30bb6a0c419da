"""
det3d's default config. Key names follow Detectron2's wherever Detectron2 has the key; det3d's
own keys are added by :func:`add_det3d_config`, so a Detectron2 CfgNode can take them too.

Conventions used below:

* "per axis" values are given in array-axis order: ``(D, H, W)`` in 3D, ``(H, W)`` in 2D. A single
  int means the same value on every axis.
* Boxes are ``(x0, y0, z0, x1, y1, z1)`` in voxels; box sizes (anchor sizes, canonical box size,
  min sizes) are in voxels of the model's input.
* Some Detectron2 keys are kept only so that Detectron2 config files load; det3d does not read
  them: DATASETS.PROPOSAL_FILES_* / PRECOMPUTED_PROPOSAL_TOPK_*, MODEL.ANCHOR_GENERATOR.ANGLES,
  INPUT.MASK_FORMAT, DATALOADER.ASPECT_RATIO_GROUPING, DATALOADER.REPEAT_THRESHOLD,
  TEST.KEYPOINT_OKS_SIGMAS, VIS_PERIOD, GLOBAL. Turning on a feature det3d does not implement
  (MODEL.LOAD_PROPOSALS, PROPOSAL_GENERATOR.NAME PrecomputedProposals, TEST.AUG, TEST.PRECISE_BN)
  is an error at build time (det3d/config/unsupported.py).

Where the keys live:

* a key Detectron2 also has is set on ``_C`` below, with det3d's (3D) value;
* a key only det3d has is added inside :func:`add_det3d_config` with ``_add``, so that
  ``add_det3d_config`` alone turns any Detectron2 CfgNode into a complete det3d config.
"""

import copy

from .config import CONFIG_VERSION
from .config import CfgNode as CN
from .config import register_per_axis_key

__all__ = ["_C", "add_det3d_config"]

_C = CN()
_C.VERSION = CONFIG_VERSION  # Detectron2's config version, whose key names det3d follows

# ---------------------------------------------------------------------------- #
# Model
# ---------------------------------------------------------------------------- #
_C.MODEL = CN()
_C.MODEL.DEVICE = "cpu"
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN3D"
_C.MODEL.WEIGHTS = ""
_C.MODEL.LOAD_PROPOSALS = False
_C.MODEL.MASK_ON = True
# Per-channel normalisation applied by the model to its input (after the mapper's percentile
# normalisation, which brings intensities to roughly [0, 1]). One value per input channel.
_C.MODEL.PIXEL_MEAN = [0.5]
_C.MODEL.PIXEL_STD = [0.25]

_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "build_resnet3d_fpn_backbone"
# Freeze the stem (1) and the first FREEZE_AT - 1 residual stages; 0 freezes nothing.
_C.MODEL.BACKBONE.FREEZE_AT = 0

# ---------------------------------------------------------------------------- #
# ResNet
# ---------------------------------------------------------------------------- #
_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50  # 18, 34 (basic blocks; set RES2_OUT_CHANNELS 64), 50, 101 (bottleneck)
_C.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
_C.MODEL.RESNETS.NUM_GROUPS = 1
# "FrozenBN", "BN", "SyncBN", "GN", or "" (no norm)
_C.MODEL.RESNETS.NORM = "BN"
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
_C.MODEL.RESNETS.RES5_DILATION = 1
# Output channels of res2; doubles at each stage. Bottleneck stages use RES2_OUT_CHANNELS/4 inside.
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
# Deformable convs are not supported in det3d; kept for Detectron2 key compatibility.
_C.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]

# ---------------------------------------------------------------------------- #
# FPN
# ---------------------------------------------------------------------------- #
_C.MODEL.FPN = CN()
_C.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
# 128, not Detectron2's 256: every RoI the heads pool carries these channels over a 3D grid
# (k^3 bins, not k^2), and the pyramid and RPN convs run over volumes. With the heads below, one
# training step of the defaults on 2 volumes of 64x128x128 peaks at 3.5 GiB and takes 14 s on one
# core; with 256 channels here and in the mask head, 4.9 GiB and 46 s (bench/memory.py).
_C.MODEL.FPN.OUT_CHANNELS = 128
_C.MODEL.FPN.NORM = ""
# "sum" or "avg"
_C.MODEL.FPN.FUSE_TYPE = "sum"

# ---------------------------------------------------------------------------- #
# Anchor generator
# ---------------------------------------------------------------------------- #
_C.MODEL.ANCHOR_GENERATOR = CN()
_C.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator3D"
# One list of sizes per feature level (xy side of the anchor, in input voxels).
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
# xy aspect ratios (height / width), one list per level or one list for all levels.
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
_C.MODEL.ANCHOR_GENERATOR.ANGLES = [[0.0]]  # unused; Detectron2 key compatibility
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0

# ---------------------------------------------------------------------------- #
# RPN
# ---------------------------------------------------------------------------- #
_C.MODEL.PROPOSAL_GENERATOR = CN()
_C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN3D"
_C.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 0

_C.MODEL.RPN = CN()
_C.MODEL.RPN.HEAD_NAME = "StandardRPNHead3D"
_C.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
_C.MODEL.RPN.BOUNDARY_THRESH = -1
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
_C.MODEL.RPN.IOU_LABELS = [0, -1, 1]
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
# Box regression loss: "smooth_l1", "huber" (Huber after soft clipping c * tanh(x / c)), "giou"
_C.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0
# Weights on (dx, dy[, dz], dw, dh[, dd]): length 2 * SPATIAL_DIMS, or 6 in 2D (z entries dropped).
_C.MODEL.RPN.BBOX_REG_WEIGHTS = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0
_C.MODEL.RPN.LOSS_WEIGHT = 1.0
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.NMS_THRESH = 0.7
_C.MODEL.RPN.CONV_DIMS = [-1]

# ---------------------------------------------------------------------------- #
# ROI heads
# ---------------------------------------------------------------------------- #
_C.MODEL.ROI_HEADS = CN()
_C.MODEL.ROI_HEADS.NAME = "StandardROIHeads3D"
_C.MODEL.ROI_HEADS.NUM_CLASSES = 1
_C.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
_C.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]
# RoIs sampled per volume for the box head, at most POSITIVE_FRACTION of them foreground; only
# the foreground ones reach the mask head, whose memory they set (~5 MiB of activations each,
# below). 256, not Detectron2's 512: a 64x128x128 training crop holds tens of objects, so up to
# 64 foreground RoIs per volume leave none out, and the box head's share halves. 0.25 as in
# Detectron2 (the configs that inherit it, the demo's among them, were tuned with it).
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True

# ---------------------------------------------------------------------------- #
# Box head
# ---------------------------------------------------------------------------- #
_C.MODEL.ROI_BOX_HEAD = CN()
_C.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead3D"
# "smooth_l1", "huber" (with soft clipping, see HUBER_CLIP), "giou"
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = [10.0, 10.0, 10.0, 5.0, 5.0, 5.0]
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0
# 5^3 bins x 128 channels = 16,000 inputs to the first FC, the size of 2D's 7^2 x 256 = 12,544
# (7^3 x 256 = 87,808 made it a 90M-parameter layer). Int or per axis, e.g. [3, 7, 7] for thin
# z; the synthetic demo measured 7^3 no better than 5^3 (MODEL_ZOO.md).
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 5
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 2
# Detectron2's width: on 16,000 inputs the two FCs hold 17M parameters (0.2 GiB with gradients
# and momentum) and 8 KiB of activations per RoI, not what limits memory.
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
_C.MODEL.ROI_BOX_HEAD.NUM_CONV = 0
_C.MODEL.ROI_BOX_HEAD.CONV_DIM = 256
_C.MODEL.ROI_BOX_HEAD.NORM = ""
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
_C.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = False
_C.MODEL.ROI_BOX_HEAD.USE_FED_LOSS = False
_C.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = False

# Cascade R-CNN's stages (MODEL.ROI_HEADS.NAME "CascadeROIHeads3D"): per stage, the box
# regression weights (x, y, z, w, h, d) and the IoU from which a RoI is foreground
_C.MODEL.ROI_BOX_CASCADE_HEAD = CN()
# (lists, not Detectron2's tuples: a list of lists survives the round trip through config.yaml)
_C.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = [
    [10.0, 10.0, 10.0, 5.0, 5.0, 5.0],
    [20.0, 20.0, 20.0, 10.0, 10.0, 10.0],
    [30.0, 30.0, 30.0, 15.0, 15.0, 15.0],
]
_C.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = [0.5, 0.6, 0.7]

# ---------------------------------------------------------------------------- #
# Mask head
# ---------------------------------------------------------------------------- #
_C.MODEL.ROI_MASK_HEAD = CN()
_C.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead3D"
# Masks are predicted at twice the pooled size: 7 gives 14^3 = 2,744 voxels per object, 3.5x the
# 28^2 of 2D. The mask head keeps about (NUM_CONV + 2) x 7^3 x CONV_DIM floats per RoI for the
# backward pass: 5 MiB at 7 / 128, where 14 / 256 (Detectron2's sizes, upsampled to 28^3) kept
# 130 MiB, 17 GiB for 128 foreground RoIs. Measured on the defaults (2 volumes of 64x128x128):
# 3.5 GiB per training step at 7, 4.1 GiB at 8 (16^3 masks). Int or per axis.
_C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 7
_C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"
_C.MODEL.ROI_MASK_HEAD.NUM_CONV = 4
_C.MODEL.ROI_MASK_HEAD.CONV_DIM = 128
_C.MODEL.ROI_MASK_HEAD.NORM = ""
_C.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = False

# ---------------------------------------------------------------------------- #
# Input
# ---------------------------------------------------------------------------- #
_C.INPUT = CN()
_C.INPUT.FORMAT = "GRAY"  # channels are whatever the volume holds; kept for Detectron2 compat
_C.INPUT.MASK_FORMAT = "bitmask"

# ---------------------------------------------------------------------------- #
# Datasets / dataloader
# ---------------------------------------------------------------------------- #
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ()
_C.DATASETS.PROPOSAL_FILES_TRAIN = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000
_C.DATASETS.TEST = ()
_C.DATASETS.PROPOSAL_FILES_TEST = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 2
_C.DATALOADER.ASPECT_RATIO_GROUPING = False
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
_C.DATALOADER.REPEAT_THRESHOLD = 0.0
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

# ---------------------------------------------------------------------------- #
# Solver
# ---------------------------------------------------------------------------- #
_C.SOLVER = CN()
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"  # or "WarmupCosineLR"
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.01
_C.SOLVER.BASE_LR_END = 0.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 0.0001
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
_C.SOLVER.WEIGHT_DECAY_BIAS = None
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)
_C.SOLVER.NUM_DECAYS = 3
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.RESCALE_INTERVAL = False
_C.SOLVER.CHECKPOINT_PERIOD = 5000
_C.SOLVER.IMS_PER_BATCH = 2
_C.SOLVER.REFERENCE_WORLD_SIZE = 0
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.CLIP_GRADIENTS = CN({"ENABLED": False})
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"  # "value" or "norm"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
_C.SOLVER.AMP = CN({"ENABLED": False})

# ---------------------------------------------------------------------------- #
# Test
# ---------------------------------------------------------------------------- #
_C.TEST = CN()
_C.TEST.EXPECTED_RESULTS = []
_C.TEST.EVAL_PERIOD = 0
_C.TEST.KEYPOINT_OKS_SIGMAS = []
# Detections kept per volume. Dense nuclei volumes hold hundreds: no 100 cap.
_C.TEST.DETECTIONS_PER_IMAGE = 500
_C.TEST.AUG = CN({"ENABLED": False})
_C.TEST.PRECISE_BN = CN({"ENABLED": False, "NUM_ITER": 200})

# ---------------------------------------------------------------------------- #
# Misc
# ---------------------------------------------------------------------------- #
_C.OUTPUT_DIR = "./output"
_C.SEED = -1
_C.CUDNN_BENCHMARK = False
_C.FLOAT32_PRECISION = ""
_C.VIS_PERIOD = 0
_C.GLOBAL = CN()
_C.GLOBAL.HACK = 1.0


def add_det3d_config(cfg: CN) -> None:
    """
    Makes ``cfg`` (a det3d or a Detectron2 CfgNode) a complete det3d config, in place. Call it
    right after ``get_cfg()``, before merging config files, as every Detectron2 ``add_*_config``:

    .. code-block:: python

        cfg = detectron2.config.get_cfg()
        add_det3d_config(cfg)
        cfg.merge_from_file("configs/Synthetic/mask_rcnn_R18_FPN_3d_cpu.yaml")

    The rule for the keys both libraries have: **det3d's default wins**. Afterwards every key of
    det3d's defaults holds the value ``det3d.config.get_cfg()`` has (the registry names of det3d's
    3D parts, box regression weights of length 6, one-channel ``PIXEL_MEAN``, one anchor size per
    level, ...), so a det3d yaml merges cleanly and builds the same model as in det3d alone. Keys
    only Detectron2 has keep their values; ``VERSION`` stays (det3d follows Detectron2's numbering,
    see ``det3d.config.config.CONFIG_VERSION``). A config that already has det3d's keys (a det3d
    config, or a second call) only gets the keys it lacks: nothing set there is reset.
    """
    _C = cfg
    was_frozen = _C.is_frozen()
    _C.defrost()

    # A config without det3d's keys takes det3d's values; one with them only gets what it lacks.
    overwrite = "SPATIAL_DIMS" not in _C.get("MODEL", {})
    _set_det3d_values(_C, _DETECTRON2_NAMED, overwrite)

    def _add(node: CN, key: str, value) -> None:
        if key not in node:
            if isinstance(value, CN) and type(value) is not type(_C):
                # a new sub-node in the config's own class (Detectron2's CfgNode when cfg is
                # Detectron2's), or merging a yaml into it fails yacs' type check
                value = type(_C)(value)
            node[key] = value

    # Keys Detectron2 has no counterpart for (the ones below too), added to any config.
    # Backbone stem: conv (kernel/stride per axis) then an optional max-pool (stride per axis,
    # 1 = none).
    # For strongly anisotropic volumes use e.g. STEM_STRIDE [1, 2, 2] so z is not downsampled early.
    _add(_C.MODEL.RESNETS, "STEM_KERNEL_SIZE", [7, 7, 7])
    _add(_C.MODEL.RESNETS, "STEM_STRIDE", [2, 2, 2])
    _add(_C.MODEL.RESNETS, "STEM_POOL_STRIDE", [2, 2, 2])
    # Stride of the first block of res2..res5, each an int or a per-axis list. Empty = [1, 2, 2, 2].
    _add(_C.MODEL.RESNETS, "STAGE_STRIDES", [])
    # Add an extra coarser level ("p6") by stride-2 max-pool of the coarsest output.
    _add(_C.MODEL.FPN, "TOP_BLOCK", True)
    # z aspect ratios (depth / xy side), one list per level or one list for all; ignored in 2D.
    # For anisotropic voxels, a sphere of xy side s spans s * spacing_xy / spacing_z voxels in z.
    _add(_C.MODEL.ANCHOR_GENERATOR, "Z_ASPECT_RATIOS", [[1.0]])
    # Box head classification loss: "ce" (softmax cross-entropy) or "focal" (softmax focal loss).
    _add(_C.MODEL.ROI_BOX_HEAD, "CLS_LOSS_TYPE", "ce")
    _add(_C.MODEL.ROI_BOX_HEAD, "FOCAL_LOSS_ALPHA", 0.25)
    _add(_C.MODEL.ROI_BOX_HEAD, "FOCAL_LOSS_GAMMA", 2.0)
    # Optimizer: "SGD", "ADAMW", "ADAM" (Detectron2's build_optimizer honours it through
    # det3d.bridge.detectron2); BETAS are Adam's.
    _add(_C.SOLVER, "OPTIMIZER", "SGD")
    _add(_C.SOLVER, "BETAS", (0.9, 0.999))

    # 2 = images (H, W), 3 = volumes (D, H, W). Every module reads this.
    _add(_C.MODEL, "SPATIAL_DIMS", 3)
    # Top-level modules of the meta-architecture to freeze (no gradient, eval mode), e.g.
    # ["backbone", "proposal_generator"] to train the ROI heads on live proposals of a frozen,
    # pretrained RPN (training stage "heads").
    _add(_C.MODEL, "FREEZE_MODULES", [])

    _add(_C.MODEL.RPN, "HUBER_CLIP", 3.0)  # c in c * tanh(x / c) before the Huber loss
    _add(_C.MODEL.RPN, "HUBER_DELTA", 1.0)
    # "ce" (binary cross-entropy) or "focal" (sigmoid focal loss) on objectness
    _add(_C.MODEL.RPN, "CLS_LOSS_TYPE", "ce")
    _add(_C.MODEL.RPN, "FOCAL_LOSS_ALPHA", 0.25)
    _add(_C.MODEL.RPN, "FOCAL_LOSS_GAMMA", 2.0)
    # Which anchors are positive: "iou" (IOU_THRESHOLDS / IOU_LABELS plus each object's best
    # anchors, Detectron2) or "atss" (per object, the mean + std of the IoUs of its ATSS_TOPK
    # nearest anchors per level; see det3d/modeling/matcher.py:ATSSMatcher)
    _add(_C.MODEL.RPN, "MATCHER", "iou")
    _add(_C.MODEL.RPN, "ATSS_TOPK", 9)

    _add(_C.MODEL.ROI_HEADS, "CANONICAL_BOX_SIZE", 224)  # geometric-mean side mapped to level 4
    _add(_C.MODEL.ROI_HEADS, "CANONICAL_LEVEL", 4)
    _add(_C.MODEL.ROI_HEADS, "CLS_LOSS_WEIGHT", 1.0)
    # Objectness (foreground probability 1 - p(background) of the detection's RoI, whatever its
    # class) a detection needs to be painted into the "instance_labels" volume: a RoI torn between
    # two classes is still an object. Detections down to SCORE_THRESH_TEST (a per-class score)
    # stay in "instances" (COCO AP wants them); the label volume, which matching metrics and SEG
    # score and biologists use, holds only the confident objects.
    _add(_C.MODEL.ROI_HEADS, "LABELS_SCORE_THRESH_TEST", 0.5)
    # A detection whose mask is already claimed by earlier-pasted ones for more than this fraction
    # of its voxels stays out of the label volume (one label per object, whatever its class).
    _add(_C.MODEL.ROI_HEADS, "LABELS_OVERLAP_THRESH_TEST", 0.5)
    # Who owns a voxel that two pasted instances claim: "mask_prob", the one whose mask
    # probability is higher there (touching objects split where their masks cross), or "first",
    # the earlier-pasted (more confident) one, as Detectron2's panoptic merge.
    _add(_C.MODEL.ROI_HEADS, "LABELS_VOXEL_OWNER", "mask_prob")
    # Localisation quality (IoU-Net, Jiang et al., ECCV 2018): with ENABLED the box predictor also
    # estimates, for each RoI, the IoU of its box with the object it overlaps most (one sigmoid
    # output, loss LOSS_WEIGHT * binary cross-entropy against that IoU over every sampled RoI),
    # and each detection carries the estimate for its final box ("pred_box_iou"). StandardROIHeads
    # only.
    _add(_C.MODEL.ROI_BOX_HEAD, "IOU_HEAD", CN({"ENABLED": False}))
    _add(_C.MODEL.ROI_BOX_HEAD.IOU_HEAD, "LOSS_WEIGHT", 1.0)
    # Where detections carry "pred_box_iou", the label volume pastes them in decreasing
    # objectness * pred_box_iou ** LABELS_IOU_POWER (0: objectness alone); whether a detection
    # enters is still decided by its objectness (LABELS_SCORE_THRESH_TEST). A box that spans two
    # touching objects is a confident detection but a poor box of either: pasted after the
    # objects' own detections, the overlap rule leaves it out instead of them.
    _add(_C.MODEL.ROI_HEADS, "LABELS_IOU_POWER", 1.0)
    _add(_C.MODEL.ROI_BOX_HEAD, "HUBER_CLIP", 3.0)
    _add(_C.MODEL.ROI_BOX_HEAD, "HUBER_DELTA", 1.0)

    # Mask loss: "bce" or "bce_dice" (BCE_WEIGHT * BCE + DICE_WEIGHT * Dice)
    _add(_C.MODEL.ROI_MASK_HEAD, "LOSS_TYPE", "bce")
    _add(_C.MODEL.ROI_MASK_HEAD, "BCE_WEIGHT", 1.0)
    _add(_C.MODEL.ROI_MASK_HEAD, "DICE_WEIGHT", 1.0)
    _add(_C.MODEL.ROI_MASK_HEAD, "LOSS_WEIGHT", 1.0)
    # The weight, in the mask BCE, of a RoI's voxels that belong to another gt object: where
    # objects touch, a box holds part of its neighbour, and a mask that takes it in merges the two
    # objects in the label volume. 1.0 = as every other voxel (Detectron2).
    _add(_C.MODEL.ROI_MASK_HEAD, "NEIGHBOR_WEIGHT", 1.0)
    # A neighbour branch in the mask head (BCNet's occluder layer): this many 3x3(x3) convs on the
    # pooled features learn which of the RoI's voxels belong to *other* gt objects (its own loss,
    # "loss_mask_neighbor", times NEIGHBOR_LOSS_WEIGHT) and add their features to the pooled ones
    # before the mask convs, so a mask is predicted knowing where its touching neighbours lie.
    # 0 = none (Detectron2's head).
    _add(_C.MODEL.ROI_MASK_HEAD, "NEIGHBOR_CONVS", 0)
    _add(_C.MODEL.ROI_MASK_HEAD, "NEIGHBOR_LOSS_WEIGHT", 1.0)
    # Probability above which a pasted mask voxel belongs to the instance.
    _add(_C.MODEL.ROI_MASK_HEAD, "MASK_THRESHOLD", 0.5)
    # The mask branch pools and predicts in boxes scaled by this factor about their centres, so a
    # mask reaches past a box that cut its object short (3D boxes regressed from low-contrast
    # volumes often do); 1.0 = the box itself, as in Detectron2.
    _add(_C.MODEL.ROI_MASK_HEAD, "BOX_EXPAND", 1.0)
    # The factor at inference; 0 = BOX_EXPAND. A mask head trained on the boxes themselves
    # predicts well on boxes somewhat larger (it is convolutional): with a foreground head deciding
    # where objects end, a mask on an enlarged box lets its instance claim what its box cut off.
    _add(_C.MODEL.ROI_MASK_HEAD, "BOX_EXPAND_TEST", 0.0)
    # In training, the mask branch sees at most this many foreground RoIs per volume, drawn at
    # random; 0 = all of them, as Detectron2. In 3D the mask branch (convolutions over (2P)^3
    # voxels per RoI) is the dearest part of a step: a cap makes steps cheaper on CPUs.
    _add(_C.MODEL.ROI_MASK_HEAD, "TRAIN_ROIS_PER_IMAGE", 0)
    # With TRAIN_ROIS_PER_IMAGE > 0, a foreground RoI is drawn with weight 1 + this * its box IoU
    # with the gt object it is not matched to that its box overlaps most: RoIs that hold a
    # touching neighbour, where a mask head spills into it, are drawn more often. 0 = uniform.
    _add(_C.MODEL.ROI_MASK_HEAD, "TRAIN_ROIS_NEIGHBOR_BIAS", 0.0)
    # Channels of the mask head's image refinement: the RoI's input voxels, resampled at the mask
    # resolution, join the upsampled features for two last convs, so mask boundaries follow the
    # image and not only features of stride 4 and up. 0 = none (Detectron2's head).
    _add(_C.MODEL.ROI_MASK_HEAD, "IMAGE_REFINE_DIM", 0)

    # Foreground head (det3d/modeling/foreground_head.py): a foreground probability for every
    # input voxel, from one feature level and the image. With it, an instance's voxels in
    # "instance_labels" are those where its mask probability reaches MASK_THRESHOLD and the
    # foreground probability reaches THRESHOLD: the masks say which object, the head where objects
    # end, at the input's resolution rather than the mask grid's. "" = no head.
    _add(_C.MODEL, "FOREGROUND_HEAD", CN())
    _add(_C.MODEL.FOREGROUND_HEAD, "NAME", "")
    _add(_C.MODEL.FOREGROUND_HEAD, "IN_FEATURE", "p2")
    _add(_C.MODEL.FOREGROUND_HEAD, "CONV_DIM", 8)
    _add(_C.MODEL.FOREGROUND_HEAD, "NUM_CONV", 0)
    # kernel-3 convs (after a kernel-3 conv of the averaged input) on a grid of half IN_FEATURE's
    # stride per axis, between the features and the full-resolution layers: detail at an eighth
    # of a full-resolution conv's cost in 3D
    _add(_C.MODEL.FOREGROUND_HEAD, "MID_RES_CONVS", 0)
    _add(_C.MODEL.FOREGROUND_HEAD, "NORM", "")
    _add(_C.MODEL.FOREGROUND_HEAD, "LOSS_WEIGHT", 1.0)
    _add(_C.MODEL.FOREGROUND_HEAD, "THRESHOLD", 0.5)
    # replaces ROI_MASK_HEAD.MASK_THRESHOLD in the label volume where the head is on
    _add(_C.MODEL.FOREGROUND_HEAD, "MASK_THRESHOLD", 0.2)
    # Only NAME FPNForegroundCenterHead reads these (any other head refuses them when set): the
    # centre map's loss weight, and whether and how the model splits an instance of
    # "instance_labels" that holds two or more centres (det3d/modeling/center_split.py): seeds are
    # connected regions of centre probability >= SEED_THRESHOLD of >= MIN_SEED_VOXELS voxels.
    _add(_C.MODEL.FOREGROUND_HEAD, "CENTER_LOSS_WEIGHT", 1.0)
    _add(_C.MODEL.FOREGROUND_HEAD, "CENTER_SPLIT", True)
    _add(_C.MODEL.FOREGROUND_HEAD, "CENTER_SEED_THRESHOLD", 0.5)
    _add(_C.MODEL.FOREGROUND_HEAD, "CENTER_MIN_SEED_VOXELS", 8)

    # Input pipeline for volumes (DatasetMapper3D)
    _add(_C.INPUT, "IN_CHANNELS", 1)
    # Percentile intensity normalisation: (x - p_low) / (p_high - p_low), per channel.
    _add(_C.INPUT, "NORM_PERCENTILES", [1.0, 99.8])
    # Resample every volume to this (z, y, x) spacing in micrometres; empty = keep voxel grid.
    _add(_C.INPUT, "TARGET_SPACING", [])
    # Training crop size per axis (D, H, W); empty = whole volume.
    _add(_C.INPUT, "CROP_SIZE", [])
    # Instances cut by the crop keep their visible part; remnants smaller than this fraction of
    # the instance's full volume (or MIN_INSTANCE_VOXELS voxels) are dropped.
    _add(_C.INPUT, "CROP_MIN_VISIBLE_FRACTION", 0.25)
    _add(_C.INPUT, "MIN_INSTANCE_VOXELS", 8)
    _add(_C.INPUT, "RANDOM_FLIP_AXES", [0, 1, 2])  # array axes (D=0, H=1, W=2) to flip at random
    _add(_C.INPUT, "ROTATE90_XY", True)
    _add(_C.INPUT, "INTENSITY_SCALE", [0.9, 1.1])
    _add(_C.INPUT, "INTENSITY_SHIFT", [-0.1, 0.1])
    _add(_C.INPUT, "GAMMA", [0.8, 1.25])
    _add(_C.INPUT, "NOISE_STD", 0.02)
    # Touching copy-paste (det3d/data/transforms/copy_paste.py): per training volume, this many
    # copies of its objects pasted against other objects, each with a ring of RING background
    # voxels (the object's blurred edge); 0 = off. A copy may lie on top of the objects it meets
    # while each keeps a fraction of its voxels drawn between MIN_KEEP and 1 (1: face to face).
    _add(_C.INPUT, "COPY_PASTE", CN())
    _add(_C.INPUT.COPY_PASTE, "NUM_TOUCHING", 0)
    _add(_C.INPUT.COPY_PASTE, "RING", 2)
    _add(_C.INPUT.COPY_PASTE, "MIN_KEEP", 1.0)
    # Mosaic (DatasetMapper3D.map_mosaic): each training sample joins NUM_VOLUMES augmented
    # volumes side by side along one spatial axis drawn from AXES (array axes, D=0, H=1, W=2), so
    # the network also trains on inputs larger than one volume, as it will meet at inference (a
    # larger volume, a tile). SOLVER.IMS_PER_BATCH counts samples: a batch then holds
    # IMS_PER_BATCH * NUM_VOLUMES volumes. 1 = off. AXES empty = every spatial axis.
    _add(_C.INPUT, "MOSAIC", CN())
    _add(_C.INPUT.MOSAIC, "NUM_VOLUMES", 1)
    _add(_C.INPUT.MOSAIC, "AXES", [])
    # Scale jitter (det3d/data/transforms/augmentation.py:RandomScale): with probability PROB a
    # training volume is zoomed on every axis by one factor drawn log-uniformly from RANGE
    # ([min, max]; empty = off), before the crop; without INPUT.CROP_SIZE it is cropped or padded
    # back to its own shape. Objects then train at sizes the dataset holds few of.
    _add(_C.INPUT, "RANDOM_SCALE", CN())
    _add(_C.INPUT.RANDOM_SCALE, "RANGE", [])
    _add(_C.INPUT.RANDOM_SCALE, "PROB", 0.5)

    # Evaluation
    _add(_C.TEST, "EVALUATORS", ["coco3d", "matching", "seg"])
    _add(_C.TEST, "MATCHING_IOU_THRESHOLDS", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    _add(_C.TEST, "MAX_DETS", 500)  # COCO3DEvaluator maxDets; does not cap dense volumes

    # The shape (array order) of the inputs that RPN.PRE_NMS_TOPK_TEST, RPN.POST_NMS_TOPK_TEST and
    # DETECTIONS_PER_IMAGE are meant for: an input of more voxels (a larger volume, a larger tile)
    # gets them scaled by its voxel count over this shape's (det3d/modeling/counts.py). [] = the
    # same counts for every input (Detectron2).
    _add(_C.TEST, "COUNTS_REFERENCE_SHAPE", [])

    # Tiled prediction (det3d-predict; det3d/engine/tiling.py). Sizes per axis (D, H, W) in model
    # voxels (at INPUT.TARGET_SPACING when set). Each object is kept by the tile whose core holds
    # its centroid, and must fit within about half the overlap around that core.
    _add(_C.TEST, "TILE", CN())
    _add(_C.TEST.TILE, "SIZE", [64, 256, 256])  # >= the model's size divisibility
    _add(_C.TEST.TILE, "OVERLAP", [24, 48, 48])  # < SIZE; about twice the largest object radius
    _add(_C.TEST.TILE, "BATCH_SIZE", 1)  # tiles per model call
    # An object that reaches a tile's inner face: "error" (names the keys to raise) or "keep"
    _add(_C.TEST.TILE, "CUT_OBJECTS", "error")

    # Checkpointing / engine
    _add(_C.SOLVER, "BEST_CHECKPOINT_METRIC", "")  # e.g. "segm/AP50"; empty disables
    _add(_C.SOLVER, "BEST_CHECKPOINT_MODE", "max")
    _add(_C.SOLVER, "LOG_PERIOD", 20)
    # Wall-clock minutes the training iterations fill; 0 = off. When set, MAX_ITER is the first
    # estimate and the run's length is re-fitted to its measured speed (engine.hooks.TimeBudget).
    _add(_C.SOLVER, "TIME_BUDGET_MINUTES", 0.0)
    # DDP's find_unused_parameters; also turned on by a non-empty MODEL.FREEZE_MODULES.
    _add(_C.MODEL, "DDP_FIND_UNUSED_PARAMETERS", False)
    # An exponential moving average of the weights (det3d/engine/ema.py): updated after every
    # iteration with decay min(DECAY, (1+t)/(10+t)); evaluation uses it, checkpoints hold it as
    # "ema", and a checkpoint loaded as weights only gives the model its average.
    # d2go's key names.
    _add(_C, "MODEL_EMA", CN())
    _add(_C.MODEL_EMA, "ENABLED", False)
    _add(_C.MODEL_EMA, "DECAY", 0.999)

    # Memory-saving switches (docs/internals.md "Memory-saving switches"; savings measured by
    # bench/memory.py, in MODEL_ZOO.md). Each leaves losses and outputs as they are without it
    # (up to float rounding; AMP up to its precision).
    # Activation checkpointing: in training the backbone keeps only its blocks' inputs and
    # recomputes the rest in the backward pass (about one more backbone forward per step). A
    # backbone that cannot do it raises at build time.
    _add(_C.MODEL, "BACKBONE", CN())  # (Detectron2's config has these nodes already)
    _add(_C.MODEL.BACKBONE, "CHECKPOINT", False)
    # Inference runs the box and mask branches on at most this many RoIs at a time (0 = all at
    # once): peak memory is bounded by the chunk, not by POST_NMS_TOPK_TEST or
    # DETECTIONS_PER_IMAGE. 256 leaves the CPU demo config (at most 200) unchunked.
    _add(_C.TEST, "ROI_CHUNK_SIZE", 256)
    # Mask test-time augmentation: the masks of the final detections are averaged over the input
    # flipped along every combination of these array axes (0 = z), 2**k backbone passes; boxes
    # and scores stay those of the unflipped input. [] = one pass. Models trained with flips
    # (INPUT.RANDOM_FLIP_AXES) see flipped volumes as their own.
    _add(_C.TEST, "MASK_FLIP_AXES", [])
    # With MASK_FLIP_AXES: each detection's objectness (what decides whether it enters
    # "instance_labels") is also averaged over those flips: the plain pass's, and in every flipped
    # pass the box branch's foreground probability of the detection's box. Boxes, scores and
    # classes stay the plain pass's.
    _add(_C.TEST, "FLIP_OBJECTNESS", False)
    # The test-time averages above (masks, foreground, objectness) also run on the input with its
    # last two axes (x and y) swapped, each flip again: with MASK_FLIP_AXES [0, 1, 2], the 16
    # symmetries that training with INPUT.ROTATE90_XY and RANDOM_FLIP_AXES [0, 1, 2] shows the
    # model. Twice the passes; the mask grid must be as fine in x as in y.
    _add(_C.TEST, "TRANSPOSE_XY", False)
    # Outlines of "instance_labels" re-drawn from the image (det3d/modeling/outline_refine.py):
    # each object's voxels, within GROW voxels of its outline and never another object's, are
    # those on its side of a threshold LEVEL of the way from the background's median (a shell
    # BACKGROUND_RING voxels away) to its own, on input channel CHANNEL Gaussian-smoothed with
    # SIGMA (voxels; one value or one per axis, array order). For low-contrast, noisy volumes,
    # where the network's outlines are ragged; "instances" keep the mask head's masks.
    _add(_C.TEST, "OUTLINE_REFINE", CN({"ENABLED": False}))
    _add(_C.TEST.OUTLINE_REFINE, "SIGMA", [1.0])
    _add(_C.TEST.OUTLINE_REFINE, "LEVEL", 0.5)
    _add(_C.TEST.OUTLINE_REFINE, "GROW", 3)
    _add(_C.TEST.OUTLINE_REFINE, "BACKGROUND_RING", [2, 5])
    _add(_C.TEST.OUTLINE_REFINE, "CHANNEL", 0)
    # Instances of "instance_labels" that hold two touching objects of different brightness split
    # (det3d/modeling/brightness_split.py): a detection the overlap rule left out, of objectness
    # >= MIN_OBJECTNESS, with most of its mask in one instance, takes its part of it when that
    # part's core (EROSION voxels in) differs in brightness on input channel CHANNEL from the
    # rest's by at least MIN_EFFECT pooled standard deviations, with Student's t of at least MIN_T.
    _add(_C.TEST, "BRIGHTNESS_SPLIT", CN({"ENABLED": False}))
    _add(_C.TEST.BRIGHTNESS_SPLIT, "MIN_EFFECT", 0.35)
    _add(_C.TEST.BRIGHTNESS_SPLIT, "MIN_T", 6.0)
    _add(_C.TEST.BRIGHTNESS_SPLIT, "MIN_OBJECTNESS", 0.1)
    _add(_C.TEST.BRIGHTNESS_SPLIT, "EROSION", 2)
    _add(_C.TEST.BRIGHTNESS_SPLIT, "CHANNEL", 0)
    # Autocast dtype of training (SOLVER.AMP.ENABLED) and inference (TEST.AMP.ENABLED): "" =
    # float16 on CUDA, bfloat16 on CPU; "bfloat16"; "float16" (CUDA only, raises on CPU).
    _add(_C.SOLVER, "AMP", CN({"ENABLED": False}))
    _add(_C.SOLVER.AMP, "DTYPE", "")
    _add(_C.TEST, "AMP", CN({"ENABLED": False}))
    _add(_C.TEST.AMP, "DTYPE", "")

    # 2.5D model (SliceFusionRCNN, det3d/modeling/meta_arch/slice_fusion_rcnn.py): a 2D Mask R-CNN
    # (the parts built with SPATIAL_DIMS 2) on each z-slice, which sees its neighbour slices
    # through a fusion module, and per-slice instances linked into 3D objects. SPATIAL_DIMS stays 3:
    # the model takes and returns volumes.
    _add(_C.MODEL, "SLICE_FUSION", CN())
    # SLICE_FUSION_REGISTRY name: CenterSlice (no fusion), ChannelStack, SliceWeights,
    # WindowedSliceWeights, ConvFusion, AttentionFusion
    _add(_C.MODEL.SLICE_FUSION, "NAME", "SliceWeights")
    _add(_C.MODEL.SLICE_FUSION, "NUM_SLICES", 3)  # window of 2k+1 slices around the target; odd
    # Window slices beyond the volume's ends: "replicate" (end slice), "reflect", "zeros"
    _add(_C.MODEL.SLICE_FUSION, "PAD_MODE", "replicate")
    # Where the fusion acts: "input" (the window's slices, before the backbone) or "features"
    # (each FPN level, after the shared 2D backbone ran on every slice of the window)
    _add(_C.MODEL.SLICE_FUSION, "STAGE", "features")
    _add(_C.MODEL.SLICE_FUSION, "PER_LEVEL", False)  # separate fusion weights per FPN level
    # Initial per-slice weights: "center" (exactly the 2D model on the centre slice) or "uniform"
    _add(_C.MODEL.SLICE_FUSION, "INIT", "center")
    _add(_C.MODEL.SLICE_FUSION, "HIDDEN_DIM", 16)  # WindowedSliceWeights MLP, AttentionFusion keys
    _add(_C.MODEL.SLICE_FUSION, "WINDOW_SIZE", 8)  # WindowedSliceWeights: window side in pixels
    _add(_C.MODEL.SLICE_FUSION, "CONV_KERNEL_SIZE", 3)  # ConvFusion: in-plane kernel size
    # Linking per-slice instances into 3D objects (det3d.modeling.link_slice_instances): least
    # mask IoU between instances of nearby slices, slices an object may be missing from, and the
    # least number of slices of an object. IoU 0.1: the end slices of an object are small, and
    # linking ground truth cut into slices with 0.3 split them off (tests/modeling/
    # test_slice_linking.py: SEG 0.957 with 0.1, 0.932 with 0.3 on touching objects).
    _add(_C.MODEL.SLICE_FUSION, "LINK_IOU", 0.1)
    _add(_C.MODEL.SLICE_FUSION, "LINK_MAX_GAP", 1)
    _add(_C.MODEL.SLICE_FUSION, "LINK_MIN_DEPTH", 1)
    # pred_masks of the linked 3D objects: each object's mask in its box, resampled to this size
    # (D, H, W); instance_labels holds the exact masks.
    _add(_C.MODEL.SLICE_FUSION, "MASK_RESOLUTION", [16, 28, 28])
    # Training: sampling weight of a target slice without objects (slices with objects weigh 1;
    # 0 skips empty slices), and, when the model is given whole volumes rather than slice windows,
    # how many target slices it trains on per volume.
    _add(_C.MODEL.SLICE_FUSION, "EMPTY_SLICE_WEIGHT", 0.1)
    _add(_C.MODEL.SLICE_FUSION, "TRAIN_SLICES_PER_VOLUME", 4)
    # Inference runs the 2D model on this many target slices at once (memory does not grow with
    # the volume's depth).
    _add(_C.TEST, "SLICE_BATCH_SIZE", 8)
    # The training mapper (det3d.data.DATASET_MAPPER_REGISTRY): "DatasetMapper3D" (whole volumes
    # or crops) or "SliceDatasetMapper" (one target slice and its window per sample, for 2.5D).
    _add(_C, "DATALOADER", CN())
    _add(_C.DATALOADER, "TRAIN_MAPPER", "DatasetMapper3D")

    # Synthetic data (det3d.data.synthetic) used by the builtin "synthetic_*" splits
    _add(_C, "SYNTHETIC", CN())
    _add(_C.SYNTHETIC, "ROOT", "datasets/synthetic")

    # Transformer-era backbones (det3d/modeling/backbone/{convnext,vit,hiera}.py). Per-axis values
    # are in array order (D, H, W); in 2D a 3-list drops its D entry. PRETRAINED: a local 2D (or
    # same-dimensional) state dict with the official key names, inflated to 3D at build time
    # (det3d/checkpoint/inflate.py); nothing is downloaded. Outputs are named stage2.. (ConvNeXt,
    # Hiera; set MODEL.FPN.IN_FEATURES to them) or p2.. (ViTDet's simple feature pyramid).
    _add(_C.MODEL, "CONVNEXT", CN())
    # ConvNeXt-T: DEPTHS [3, 3, 9, 3], DIMS [96, 192, 384, 768]; -S: DEPTHS [3, 3, 27, 3].
    _add(_C.MODEL.CONVNEXT, "DEPTHS", [3, 3, 9, 3])
    _add(_C.MODEL.CONVNEXT, "DIMS", [96, 192, 384, 768])
    _add(_C.MODEL.CONVNEXT, "STEM_STRIDE", [4, 4, 4])  # patchify stem: kernel = stride, per axis
    # Stride (= kernel) of the downsampling layer before each later stage; empty = 2 on every axis.
    _add(_C.MODEL.CONVNEXT, "DOWNSAMPLE_STRIDES", [])
    _add(_C.MODEL.CONVNEXT, "KERNEL_SIZE", [7, 7, 7])  # depthwise kernel per axis (odd)
    _add(_C.MODEL.CONVNEXT, "DROP_PATH_RATE", 0.1)
    _add(_C.MODEL.CONVNEXT, "LAYER_SCALE_INIT", 1e-6)  # 0 disables layer scale
    _add(_C.MODEL.CONVNEXT, "OUT_FEATURES", ["stage2", "stage3", "stage4", "stage5"])
    _add(_C.MODEL.CONVNEXT, "PRETRAINED", "")

    # ViTDet (ViT-B defaults, Detectron2's): plain ViT + simple feature pyramid.
    _add(_C.MODEL, "VIT", CN())
    _add(_C.MODEL.VIT, "PATCH_SIZE", [16, 16, 16])
    _add(_C.MODEL.VIT, "EMBED_DIM", 768)
    _add(_C.MODEL.VIT, "DEPTH", 12)
    _add(_C.MODEL.VIT, "NUM_HEADS", 12)
    _add(_C.MODEL.VIT, "MLP_RATIO", 4.0)
    _add(_C.MODEL.VIT, "QKV_BIAS", True)
    _add(_C.MODEL.VIT, "DROP_PATH_RATE", 0.1)
    _add(_C.MODEL.VIT, "USE_ABS_POS", True)
    _add(_C.MODEL.VIT, "USE_REL_POS", True)
    # The absolute position embeddings are learnt on this input size (grid = size / patch) and
    # interpolated to other inputs.
    _add(_C.MODEL.VIT, "PRETRAIN_IMG_SIZE", [224, 224, 224])
    _add(_C.MODEL.VIT, "WINDOW_SIZE", [14, 14, 14])  # in tokens; windows are padded to fit
    _add(_C.MODEL.VIT, "WINDOW_BLOCK_INDEXES", [0, 1, 3, 4, 6, 7, 9, 10])  # others: global
    # Recompute block activations in backward (torch.utils.checkpoint): less memory, slower.
    # A generic MODEL.BACKBONE switch may replace it later.
    _add(_C.MODEL.VIT, "USE_ACT_CHECKPOINT", False)
    _add(_C.MODEL.VIT, "SCALE_FACTORS", [4.0, 2.0, 1.0, 0.5])  # simple feature pyramid levels
    _add(_C.MODEL.VIT, "SFP_NORM", "LN")
    _add(_C.MODEL.VIT, "PRETRAINED", "")

    # Hiera (Hiera-T defaults): mask-unit attention, query pooling between every two stages.
    _add(_C.MODEL, "HIERA", CN())
    _add(_C.MODEL.HIERA, "EMBED_DIM", 96)
    _add(_C.MODEL.HIERA, "NUM_HEADS", 1)
    _add(_C.MODEL.HIERA, "STAGES", [1, 2, 7, 2])  # Hiera-S: [1, 2, 11, 2]; -B: [2, 3, 16, 3]
    _add(_C.MODEL.HIERA, "Q_STRIDE", [2, 2, 2])
    # In first-stage tokens; must be Q_STRIDE ** m (default: one unit per final-stage token).
    _add(_C.MODEL.HIERA, "MASK_UNIT_SIZE", [8, 8, 8])
    _add(_C.MODEL.HIERA, "MASK_UNIT_ATTN", [True, True, False, False])
    _add(_C.MODEL.HIERA, "DIM_MUL", 2.0)
    _add(_C.MODEL.HIERA, "HEAD_MUL", 2.0)
    _add(_C.MODEL.HIERA, "PATCH_KERNEL", [7, 7, 7])
    _add(_C.MODEL.HIERA, "PATCH_STRIDE", [4, 4, 4])
    _add(_C.MODEL.HIERA, "PATCH_PADDING", [3, 3, 3])
    _add(_C.MODEL.HIERA, "MLP_RATIO", 4.0)
    _add(_C.MODEL.HIERA, "DROP_PATH_RATE", 0.1)
    _add(_C.MODEL.HIERA, "PRETRAIN_IMG_SIZE", [224, 224, 224])
    _add(_C.MODEL.HIERA, "OUT_FEATURES", ["stage2", "stage3", "stage4", "stage5"])
    _add(_C.MODEL.HIERA, "PRETRAINED", "")

    if was_frozen:
        _C.freeze()


def _set_det3d_values(cfg: CN, det3d_values: CN, overwrite: bool) -> None:
    """
    Sets each key of ``det3d_values`` (but VERSION) in ``cfg``, recursively: every key when
    ``overwrite``, else only the keys ``cfg`` lacks.
    """
    for key, value in det3d_values.items():
        if key == "VERSION":
            continue
        # Any yacs node (Detectron2's CfgNode class too) is merged into, not replaced.
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            _set_det3d_values(cfg[key], value, overwrite)
        elif overwrite or key not in cfg:
            cfg[key] = type(cfg)(value) if isinstance(value, CN) else copy.deepcopy(value)


# Keys that take an int or one value per axis (array order); either form may be given.
for _key in (
    "MODEL.RESNETS.STEM_KERNEL_SIZE",
    "MODEL.RESNETS.STEM_STRIDE",
    "MODEL.RESNETS.STEM_POOL_STRIDE",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION",
    "INPUT.CROP_SIZE",
    "MODEL.SLICE_FUSION.MASK_RESOLUTION",
    "TEST.TILE.SIZE",
    "TEST.TILE.OVERLAP",
    "MODEL.CONVNEXT.STEM_STRIDE",
    "MODEL.CONVNEXT.KERNEL_SIZE",
    "MODEL.VIT.PATCH_SIZE",
    "MODEL.VIT.PRETRAIN_IMG_SIZE",
    "MODEL.VIT.WINDOW_SIZE",
    "MODEL.HIERA.Q_STRIDE",
    "MODEL.HIERA.MASK_UNIT_SIZE",
    "MODEL.HIERA.PATCH_KERNEL",
    "MODEL.HIERA.PATCH_STRIDE",
    "MODEL.HIERA.PATCH_PADDING",
    "MODEL.HIERA.PRETRAIN_IMG_SIZE",
):
    register_per_axis_key(_key)

# The keys above, with det3d's values, are what add_det3d_config sets in a Detectron2 config.
_DETECTRON2_NAMED = _C.clone()
add_det3d_config(_C)
