"""The foreground head, and GeneralizedRCNN3D's label volume with it, in 2D and 3D."""

import numpy as np
import pytest
import torch
from _rcnn_test_utils import single_thread, synthetic_input, tiny_cfg
from scipy import ndimage as ndi
from torch.nn import functional as F

from det3d.layers import ShapeSpec
from det3d.modeling import (
    FOREGROUND_HEAD_REGISTRY,
    FPNForegroundCenterHead,
    FPNForegroundHead,
    build_model,
)
from det3d.modeling.foreground_head import build_foreground_head, foreground_targets
from det3d.structures import ImageList, Instances
from det3d.structures.masks import BitMasks

SHAPES = {3: (16, 32, 32), 2: (64, 64)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _fg_cfg(ndim):
    cfg = tiny_cfg(ndim)
    cfg.MODEL.FOREGROUND_HEAD.NAME = "FPNForegroundHead"
    return cfg


def test_targets_are_the_union_of_the_masks():
    masks = torch.zeros(3, 4, 5, 6, dtype=torch.bool)
    masks[0, 0, 0, 0] = masks[1, 3, 4, 5] = masks[2, 1:3, 1:3, 1:3] = True
    with_objects = Instances((4, 5, 6), gt_masks=BitMasks(masks))
    empty = Instances((2, 5, 6), gt_masks=BitMasks(torch.zeros(0, 2, 5, 6, dtype=torch.bool)))
    got = foreground_targets([with_objects, empty])
    want = torch.zeros(4, 5, 6)
    for m in masks:  # the reference: one object at a time
        want = torch.maximum(want, m.float())
    assert torch.equal(got[0], want) and want.sum() == 2 + 8
    assert torch.equal(got[1], torch.zeros(2, 5, 6))  # no objects: all background
    with pytest.raises(KeyError, match="gt_masks"):
        foreground_targets([Instances((4, 5, 6))])


def _batch(ndim, touching):
    """Two volumes (one cropped in z) padded to 8 voxels, p2 features, and one gt object (two
    touching ones with ``touching``) in each."""
    sizes = [(8,) * ndim, (6,) + (8,) * (ndim - 1)]
    images = ImageList(torch.randn((2, 1) + (8,) * ndim), sizes)
    features = {"p2": torch.randn((2, 4) + (2,) * ndim)}
    targets = []
    for s in sizes:
        m = torch.zeros((1 + touching,) + s, dtype=torch.bool)
        m[(0,) + (slice(1, 5),) * ndim] = True
        if touching:
            m[(1,) + (slice(1, 5),) * (ndim - 1) + (slice(5, 8),)] = True  # touches object 0
        targets.append(Instances(s, gt_masks=BitMasks(m)))
    return sizes, images, features, targets


@pytest.mark.parametrize("ndim", [2, 3])
def test_loss_is_bce_plus_dice_over_each_volumes_unpadded_voxels(ndim):
    torch.manual_seed(0)
    head = FPNForegroundHead(
        input_shape=ShapeSpec(channels=4, stride=(4,) * ndim),
        in_feature="p2",
        image_channels=1,
        conv_dim=3,
        num_conv=1,
        ndim=ndim,
    )
    sizes, images, features, targets = _batch(ndim, touching=False)
    loss = head(features, images, targets)["loss_foreground"]
    logits = head.layers(features, images.tensor)
    want = []
    for i, s in enumerate(sizes):
        x = logits[(i, 0) + tuple(slice(0, k) for k in s)].flatten()
        t = targets[i].gt_masks.tensor[0].flatten().float()
        p = torch.sigmoid(x)
        dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
        want.append(F.binary_cross_entropy(p, t) + dice)
    torch.testing.assert_close(loss, torch.stack(want).mean(), rtol=1e-5, atol=1e-6)
    # the padded voxels of the second volume take no part in the loss
    loss.backward()
    probs = head(features, images)
    assert probs.shape == (2, 1) + (8,) * ndim and 0 <= probs.min() and probs.max() <= 1
    assert head.image_conv.weight.grad.abs().sum() > 0


def test_bad_config_is_named():
    cfg = _fg_cfg(3)
    cfg.MODEL.FOREGROUND_HEAD.IN_FEATURE = "p9"
    with pytest.raises(KeyError, match="IN_FEATURE 'p9'.*p2"):
        build_model(cfg)
    cfg = _fg_cfg(3)
    cfg.MODEL.FOREGROUND_HEAD.CONV_DIM = 0
    with pytest.raises(ValueError, match="CONV_DIM"):
        build_model(cfg)
    cfg.MODEL.FOREGROUND_HEAD.NAME = ""
    assert build_foreground_head(cfg, {}) is None
    assert "FPNForegroundHead" in FOREGROUND_HEAD_REGISTRY


@pytest.mark.parametrize("ndim", [2, 3])
def test_training_adds_the_foreground_loss_unless_frozen(ndim):
    torch.manual_seed(0)
    cfg = _fg_cfg(ndim)
    model = build_model(cfg)
    model.train()
    batch = [synthetic_input(SHAPES[ndim], seed=s) for s in range(2)]
    losses = model(batch)
    assert torch.isfinite(losses["loss_foreground"]) and len(losses) == 6
    sum(losses.values()).backward()
    assert model.foreground_head.reduce.weight.grad.abs().sum() > 0
    cfg.MODEL.FREEZE_MODULES = ["foreground_head"]
    frozen = build_model(cfg)
    frozen.train()
    assert "loss_foreground" not in frozen(batch) and not frozen.foreground_head.training
    # staged training, heads on a frozen backbone and RPN: the head still learns
    cfg.MODEL.FREEZE_MODULES = ["backbone", "proposal_generator"]
    heads = build_model(cfg)
    heads.train()
    losses = heads(batch)
    assert "loss_foreground" in losses and "loss_rpn_cls" not in losses
    losses["loss_foreground"].backward()
    assert heads.foreground_head.image_conv.weight.grad.abs().sum() > 0


class _Given(torch.nn.Module):
    """A stand-in head that returns a fixed foreground for every batch it is given."""

    def __init__(self, probs):
        super().__init__()
        self.probs = probs
        self.seen = []

    def forward(self, features, images, targets=None):
        self.seen.append(images.tensor.clone())
        return self.probs(images.tensor) if callable(self.probs) else self.probs


def _eval(ndim, **keys):
    torch.manual_seed(0)
    cfg = _fg_cfg(ndim)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_HEADS.LABELS_SCORE_THRESH_TEST = 0.0
    for k, v in keys.items():
        cfg.merge_from_list([k, v])
    model = build_model(cfg)
    model.eval()
    return model


@pytest.mark.parametrize("ndim", [2, 3])
def test_label_volume_keeps_mask_voxels_the_head_calls_foreground(ndim):
    # The model pastes with its keys: masks at ROI_MASK_HEAD.MASK_THRESHOLD for the overlap rule,
    # claims down to FOREGROUND_HEAD.MASK_THRESHOLD, and the head's foreground (here a stand-in
    # that says foreground on the left half of x only). The rule itself: test_postprocessing.py.
    from det3d.modeling import instances_to_label_volume

    model = _eval(ndim)
    shape = SHAPES[ndim]
    inputs = [{"image": synthetic_input(shape)["image"]}]
    half = torch.zeros((1, 1) + shape)
    half[..., : shape[-1] // 2] = 0.9
    model.foreground_head = _Given(half)
    with torch.no_grad():
        (out,) = model(inputs)
    inst, labels = out["instances"], out["instance_labels"]
    assert len(inst) > 0 and (labels > 0).any()
    assert (labels[..., shape[-1] // 2 :] == 0).all()
    want = instances_to_label_volume(
        inst, shape, 0.5, score_threshold=0.0, foreground=half[0, 0], claim_threshold=0.2
    )
    assert torch.equal(labels, want)
    without = instances_to_label_volume(inst, shape, 0.5, score_threshold=0.0)
    assert not torch.equal(labels, without)
    # an input the mapper had halved: the foreground is resampled to the original grid with the
    # boxes, so the right half of the original volume stays empty as well
    original = tuple(2 * s for s in shape)
    keys = ("depth", "height", "width")[-ndim:]
    with torch.no_grad():
        (out,) = model([dict(inputs[0], **dict(zip(keys, original)))])
    labels = out["instance_labels"]
    assert labels.shape == original and (labels > 0).any()
    assert (labels[..., original[-1] // 2 :] == 0).all()


def test_foreground_is_averaged_over_the_mask_flips():
    shape = SHAPES[3]
    model = _eval(3, **{"TEST.MASK_FLIP_AXES": "[0, 2]"})
    captured = {}
    original = model._postprocess

    def keep(results, batched_inputs, image_sizes, foreground=None):
        captured["fg"] = foreground
        return original(results, batched_inputs, image_sizes, foreground)

    model._postprocess = keep
    inputs = [{"image": synthetic_input(shape)["image"]}]
    # A head that is a voxelwise function of the image commutes with flips: every pass, flipped
    # back, gives the plain pass's foreground. Four passes: plain, z, x, zx.
    head = _Given(lambda images: torch.sigmoid(images[:, :1]))
    model.foreground_head = head
    with torch.no_grad():
        model(inputs)
    plain = torch.sigmoid(model.preprocess_image(inputs).tensor[:, :1])
    region = (slice(None), slice(None)) + tuple(slice(0, s) for s in shape)  # padded batch
    assert len(head.seen) == 4
    torch.testing.assert_close(head.seen[2][region], head.seen[0][region].flip(4))  # x
    torch.testing.assert_close(captured["fg"].tensor[region], plain[region])
    # A head that gives the same x ramp whatever it sees: the passes flipped along x return it
    # mirrored, so the mean is ramp(x) + ramp(W - 1 - x) over 2 = 0.5 everywhere.
    ramp = torch.linspace(0, 1, shape[-1])  # x is not padded
    model.foreground_head = _Given(
        lambda images: ramp.expand(images.shape[:1] + (1,) + images.shape[2:])
    )
    with torch.no_grad():
        model(inputs)
    torch.testing.assert_close(captured["fg"].tensor[region], torch.full((1, 1) + shape, 0.5))
    # two channels (a centre-map head's): each is flipped back and averaged on its own
    model.foreground_head = _Given(
        lambda images: torch.cat(
            [torch.sigmoid(images[:, :1]), ramp.expand(images.shape[:1] + (1,) + images.shape[2:])],
            dim=1,
        )
    )
    with torch.no_grad():
        model(inputs)
    torch.testing.assert_close(captured["fg"].tensor[region][:, :1], plain[region])
    torch.testing.assert_close(
        captured["fg"].tensor[region][:, 1:], torch.full((1, 1) + shape, 0.5)
    )


def test_slice_fusion_refuses_the_foreground_head():
    from det3d.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file("configs/Base-SliceFusion-RCNN-FPN.yaml")
    cfg.MODEL.FOREGROUND_HEAD.NAME = "FPNForegroundHead"
    with pytest.raises(ValueError, match="FOREGROUND_HEAD.NAME"):
        build_model(cfg)


@pytest.mark.parametrize("ndim", [2, 3])
def test_center_head_adds_a_centre_map_and_its_loss(ndim):
    from det3d.modeling.center_split import center_targets

    torch.manual_seed(0)
    cfg = _fg_cfg(ndim)
    cfg.MODEL.FOREGROUND_HEAD.NAME = "FPNForegroundCenterHead"
    cfg.MODEL.FOREGROUND_HEAD.CENTER_LOSS_WEIGHT = 0.5
    head = build_foreground_head(cfg, {"p2": ShapeSpec(channels=4, stride=(4,) * ndim)})
    assert isinstance(head, FPNForegroundCenterHead) and head.predicts_centers
    assert head.center_split == {"seed_threshold": 0.5, "min_seed_voxels": 8}
    sizes, images, features, targets = _batch(ndim, touching=True)
    losses = head(features, images, targets)
    assert set(losses) == {"loss_foreground", "loss_center"}
    logits = head.layers(features, images.tensor)
    want = []
    for i, s in enumerate(sizes):
        x = logits[(i, 1) + tuple(slice(0, k) for k in s)]
        t = center_targets(targets[i].gt_masks.tensor)
        p = torch.sigmoid(x)
        inside = F.binary_cross_entropy(p[t > 0], t[t > 0])
        outside = F.binary_cross_entropy(p[t == 0], t[t == 0])
        want.append((inside + outside) / 2)
    torch.testing.assert_close(
        losses["loss_center"], 0.5 * torch.stack(want).mean(), rtol=1e-5, atol=1e-6
    )
    probs = head(features, images)
    assert probs.shape == (2, 2) + (8,) * ndim
    # the centre keys: refused by a head without centres, and with no head; range-checked
    for name, key, value in [
        ("FPNForegroundHead", "CENTER_SPLIT", False),
        ("", "CENTER_SEED_THRESHOLD", 0.3),
        ("FPNForegroundCenterHead", "CENTER_SEED_THRESHOLD", 0.0),
        ("FPNForegroundCenterHead", "CENTER_MIN_SEED_VOXELS", 0),
    ]:
        bad = _fg_cfg(ndim)
        bad.MODEL.FOREGROUND_HEAD.NAME = name
        bad.MODEL.FOREGROUND_HEAD.merge_from_list([key, value])
        with pytest.raises(ValueError, match=key):
            build_foreground_head(bad, {"p2": ShapeSpec(channels=4, stride=(4,) * ndim)})
    cfg.MODEL.FOREGROUND_HEAD.CENTER_SPLIT = False
    assert build_foreground_head(cfg, {"p2": ShapeSpec(channels=4)}).center_split is None


@pytest.mark.parametrize("ndim", [2, 3])
def test_model_splits_instances_that_hold_two_centres(ndim):
    from det3d.modeling.center_split import center_targets

    shape = SHAPES[ndim]
    inputs = [{"image": synthetic_input(shape)["image"]}]
    # a stand-in head: foreground everywhere, and the centre map of two objects, the left and
    # the right half of x, so an instance that reaches over the middle holds two centres
    halves = torch.zeros((2,) + shape, dtype=torch.bool)
    halves[0, ..., : shape[-1] // 2] = True
    halves[1, ..., shape[-1] // 2 :] = True
    center = center_targets(halves)
    given = torch.stack([torch.full(shape, 0.9), center])[None]
    outs = {}
    for split in (True, False):
        model = _eval(ndim, **{"MODEL.FOREGROUND_HEAD.NAME": "FPNForegroundCenterHead"})
        model.foreground_head = _Given(given)
        model.foreground_head.center_split = (
            {"seed_threshold": 0.5, "min_seed_voxels": 8} if split else None
        )
        with torch.no_grad():
            (outs[split],) = model(inputs)
    plain, got = outs[False], outs[True]
    n = len(plain["instances"])
    assert len(got["instances"]) > n  # some instances were split, each part has a row
    assert int(got["instance_labels"].max()) <= len(got["instances"])

    # without the split some instance holds two seeds (connected regions of centre >= 0.5 of
    # 8 voxels or more); with it, none does
    def most_seeds(labels):
        most = 0
        for label in labels.unique().tolist()[1:]:
            regions, n = ndi.label(((labels == label) & (center >= 0.5)).numpy())
            most = max(
                most, int((np.bincount(regions.reshape(-1), minlength=n + 1)[1:] >= 8).sum())
            )
        return most

    assert most_seeds(plain["instance_labels"]) >= 2
    assert most_seeds(got["instance_labels"]) == 1
    # what was not split is as before; the split rows copy their parent's score
    assert torch.equal(got["instance_labels"] > 0, plain["instance_labels"] > 0)
    assert torch.equal(got["instances"].scores[:n], plain["instances"].scores)
    assert set(got["instances"].scores[n:].tolist()) <= set(plain["instances"].scores.tolist())


@pytest.mark.parametrize("ndim", [2, 3])
def test_mid_res_convs_run_on_half_the_feature_stride(ndim):
    torch.manual_seed(0)
    stride = (1,) + (4,) * (ndim - 1)  # anisotropic: z is not downsampled
    head = FPNForegroundHead(
        input_shape=ShapeSpec(channels=4, stride=stride),
        in_feature="p2",
        image_channels=1,
        conv_dim=3,
        mid_res_convs=2,
        ndim=ndim,
    )
    assert head.mid_factor == (1,) + (2,) * (ndim - 1) and len(head.mid_convs) == 2
    size = (4,) + (8,) * (ndim - 1)
    images = torch.randn((2, 1) + size)
    features = {"p2": torch.randn((2, 4, 4) + (2,) * (ndim - 1))}
    # reference: the input averaged over 1 x 2 x 2 blocks by reshaping, the layers one by one
    blocks = images.reshape((2, 1, 4) + sum(((4, 2),) * (ndim - 1), ()))
    mid = blocks.mean(dim=tuple(range(4, 3 + 2 * (ndim - 1), 2)))
    mode = "trilinear" if ndim == 3 else "bilinear"
    x = F.interpolate(head.reduce(features["p2"]), size=mid.shape[2:], mode=mode)
    x = F.relu(x + head.mid_image_conv(mid))
    for layer in head.mid_convs:
        x = layer(x)
    x = F.interpolate(x, size=size, mode=mode)
    want = head.predictor(F.relu(x + head.image_conv(images)))
    torch.testing.assert_close(head.layers(features, images), want, rtol=1e-5, atol=1e-6)
    # an odd size: the last block averages what it holds; the output keeps the input's size
    odd = torch.randn((1, 1, 3) + (7,) * (ndim - 1))
    assert head.layers({"p2": features["p2"][:1]}, odd).shape == (1, 1, 3) + (7,) * (ndim - 1)
    cfg = _fg_cfg(ndim)
    cfg.MODEL.FOREGROUND_HEAD.MID_RES_CONVS = 1
    built = build_foreground_head(cfg, {"p2": ShapeSpec(channels=4, stride=(4,) * ndim)})
    assert len(built.mid_convs) == 1 and built.mid_factor == (2,) * ndim
    cfg.MODEL.FOREGROUND_HEAD.MID_RES_CONVS = -1
    with pytest.raises(ValueError, match="MID_RES_CONVS"):
        build_foreground_head(cfg, {"p2": ShapeSpec(channels=4, stride=(4,) * ndim)})
