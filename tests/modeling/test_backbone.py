import math

import pytest
import torch
from _rcnn_test_utils import single_thread
from torch import nn

from det3d.config import get_cfg
from det3d.layers import FrozenBatchNorm, ShapeSpec
from det3d.modeling.backbone import (
    FPN,
    Backbone,
    BasicBlock,
    ResNet,
    build_backbone,
    build_resnet3d_backbone,
    per_axis,
)
from det3d.modeling.registries import BACKBONE_REGISTRY


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _cfg(ndim=3, **resnet):
    cfg = get_cfg()
    cfg.MODEL.SPATIAL_DIMS = ndim
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 4
    cfg.MODEL.FPN.OUT_CHANNELS = 8
    for k, v in resnet.items():
        cfg.MODEL.RESNETS[k] = v
    return cfg


def _ceil_div(shape, stride):
    return tuple(math.ceil(n / s) for n, s in zip(shape, stride))


def test_resnet_3d_anisotropic_strides_and_shapes():
    torch.manual_seed(0)
    cfg = _cfg(
        3,
        STEM_STRIDE=[1, 2, 2],
        STEM_POOL_STRIDE=[1, 2, 2],
        OUT_FEATURES=["stem", "res2", "res3", "res4", "res5"],
    )
    model = build_resnet3d_backbone(cfg, ShapeSpec(channels=1))
    shapes = model.output_shape()
    expected = {
        "stem": ((1, 4, 4), 4),
        "res2": ((1, 4, 4), 8),
        "res3": ((2, 8, 8), 16),
        "res4": ((4, 16, 16), 32),
        "res5": ((8, 32, 32), 64),
    }
    assert {k: (v.stride, v.channels) for k, v in shapes.items()} == expected
    x = torch.randn(1, 1, 8, 32, 32)
    out = model.eval()(x)
    for name, (stride, channels) in expected.items():
        assert out[name].shape == (1, channels) + _ceil_div(x.shape[2:], stride), name
    # z is downsampled less than x/y: an anisotropic stem keeps z resolution
    assert shapes["res2"].stride[0] < shapes["res2"].stride[1]


def test_resnet_2d_uses_last_two_entries_of_3d_lists():
    cfg = _cfg(2, STEM_STRIDE=[1, 2, 2], STAGE_STRIDES=[1, [1, 1, 2], 2, 2])
    model = build_resnet3d_backbone(cfg, ShapeSpec(channels=1))
    strides = {k: v.stride for k, v in model.output_shape().items()}
    assert strides == {"res2": (4, 4), "res3": (4, 8), "res4": (8, 16), "res5": (16, 32)}
    out = model(torch.randn(2, 1, 32, 64))
    assert out["res5"].shape == (2, 64, 2, 2)
    assert out["res3"].shape == (2, 16, 8, 8)


def test_per_axis():
    assert per_axis(2, 3) == (2, 2, 2)
    assert per_axis([1, 2, 2], 2) == (2, 2)
    assert per_axis([1, 2], 2) == (1, 2)
    with pytest.raises(ValueError, match="STEM_STRIDE"):
        per_axis([1, 2], 3, "MODEL.RESNETS.STEM_STRIDE")
    with pytest.raises(ValueError):
        build_backbone(_cfg(3, STEM_STRIDE=[2, 2]))


def test_no_stem_pool():
    cfg = _cfg(3, STEM_STRIDE=[1, 1, 1], STEM_POOL_STRIDE=1, OUT_FEATURES=["res2"])
    model = build_resnet3d_backbone(cfg, ShapeSpec(channels=1))
    assert model.stem.pool is None
    assert model.output_shape()["res2"].stride == (1, 1, 1)
    assert model(torch.randn(1, 1, 4, 6, 6))["res2"].shape == (1, 8, 4, 6, 6)
    # only the stages up to the last requested output are built
    assert model.stage_names == ("res2",)


def test_bottleneck_resnext_and_dilation():
    torch.manual_seed(0)
    cfg = _cfg(
        3,
        DEPTH=50,
        RES2_OUT_CHANNELS=16,
        NUM_GROUPS=2,
        WIDTH_PER_GROUP=2,
        RES5_DILATION=2,
        STEM_STRIDE=[1, 2, 2],
    )
    model = build_resnet3d_backbone(cfg, ShapeSpec(channels=1))
    shapes = model.output_shape()
    assert shapes["res4"].stride == (8, 16, 16)
    assert shapes["res5"].stride == shapes["res4"].stride  # dilation replaces the stride
    assert [len(getattr(model, f"res{i}")) for i in range(2, 6)] == [3, 4, 6, 3]
    assert {k: v.channels for k, v in shapes.items()} == {
        "res2": 16,
        "res3": 32,
        "res4": 64,
        "res5": 128,
    }
    block = model.res3[0]
    assert block.conv2.conv.groups == 2 and block.conv1.out_channels == 8
    assert model.res5[0].conv2.conv.dilation == (2, 2, 2)
    out = model.eval()(torch.randn(1, 1, 8, 32, 32))
    assert out["res5"].shape == (1, 128, 1, 2, 2)


def test_stride_in_1x1():
    for stride_in_1x1 in (True, False):
        cfg = _cfg(
            3, DEPTH=50, RES2_OUT_CHANNELS=16, WIDTH_PER_GROUP=4, STRIDE_IN_1X1=stride_in_1x1
        )
        model = build_resnet3d_backbone(cfg, ShapeSpec(channels=1))
        first = model.res3[0]
        assert first.conv1.conv.stride == ((2, 2, 2) if stride_in_1x1 else (1, 1, 1))
        assert first.conv2.conv.stride == ((1, 1, 1) if stride_in_1x1 else (2, 2, 2))


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="DEPTH"):
        build_backbone(_cfg(3, DEPTH=20))
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        build_backbone(_cfg(3, OUT_FEATURES=["res6"]))
    with pytest.raises(ValueError, match="STAGE_STRIDES"):
        build_backbone(_cfg(3, STAGE_STRIDES=[1, 2, 2]))
    with pytest.raises(ValueError, match="DEFORM_ON_PER_STAGE"):
        build_backbone(_cfg(3, DEFORM_ON_PER_STAGE=[False, True, False, False]))
    with pytest.raises(ValueError, match="input"):
        build_backbone(_cfg(3))(torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_at(freeze_at):
    cfg = _cfg(3)
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    model = build_backbone(cfg)  # FPN over ResNet
    frozen_prefixes = ["bottom_up.stem."] * (freeze_at >= 1) + [
        f"bottom_up.res{k}." for k in range(2, 6) if freeze_at >= k
    ]
    for name, p in model.named_parameters():
        should_freeze = any(name.startswith(pre) for pre in frozen_prefixes)
        assert p.requires_grad == (not should_freeze), name
    for name, m in model.named_modules():
        if not name:
            continue
        in_frozen = any((name + ".").startswith(pre) for pre in frozen_prefixes)
        if in_frozen:
            assert not isinstance(m, nn.BatchNorm3d), name
        if isinstance(m, FrozenBatchNorm):
            assert in_frozen, name
    n_frozen_bn = sum(isinstance(m, FrozenBatchNorm) for m in model.modules())
    assert (n_frozen_bn > 0) == (freeze_at > 0)


def test_frozen_bn_conversion_keeps_eval_function():
    torch.manual_seed(0)
    block = BasicBlock(4, 8, ndim=3, stride=(1, 2, 2), norm="BN")
    for m in block.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-1, 1)
    block.eval()
    x = torch.randn(2, 4, 4, 8, 8)
    before = block(x)
    block.freeze()
    assert not any(isinstance(m, nn.BatchNorm3d) for m in block.modules())
    assert all(not p.requires_grad for p in block.parameters())
    block.train()  # a frozen block normalises with its fixed statistics even in training mode
    torch.testing.assert_close(block(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["", "GN", "FrozenBN", "BN"])
def test_norms(norm):
    cfg = _cfg(2, NORM=norm)
    model = build_backbone(cfg)
    out = model(torch.randn(2, 1, 32, 32))
    assert set(out) == {"p2", "p3", "p4", "p5", "p6"}


def _upsample_reference(x, size):
    # nearest upsampling by an integer factor per axis, the slow and obvious way
    for axis, n in enumerate(size, start=2):
        factor = n // x.shape[axis]
        x = x.repeat_interleave(factor, dim=axis)
    return x


def test_fpn_3d_anisotropic_against_reference():
    torch.manual_seed(0)
    cfg = _cfg(
        3, STEM_STRIDE=[1, 2, 2], STEM_POOL_STRIDE=[1, 2, 2], STAGE_STRIDES=[1, [1, 2, 2], 2, 2]
    )
    model = build_backbone(cfg)
    assert isinstance(model, FPN)
    strides = {k: v.stride for k, v in model.output_shape().items()}
    assert strides == {
        "p2": (1, 4, 4),
        "p3": (1, 8, 8),
        "p4": (2, 16, 16),
        "p5": (4, 32, 32),
        "p6": (8, 64, 64),
    }
    assert model.size_divisibility == (4, 32, 32)
    x = torch.randn(1, 1, 8, 64, 64)
    out = model(x)
    for name, stride in strides.items():
        assert out[name].shape == (1, 8) + _ceil_div(x.shape[2:], stride), name

    # reference top-down pass
    bottom = model.bottom_up(x)
    prev = model.fpn_lateral5(bottom["res5"])
    ref = {"p5": model.fpn_output5(prev)}
    for level in (4, 3, 2):
        lateral = getattr(model, f"fpn_lateral{level}")(bottom[f"res{level}"])
        prev = lateral + _upsample_reference(prev, lateral.shape[2:])
        ref[f"p{level}"] = getattr(model, f"fpn_output{level}")(prev)
    ref["p6"] = ref["p5"][:, :, ::2, ::2, ::2]
    for name in ref:
        torch.testing.assert_close(out[name], ref[name], rtol=1e-5, atol=1e-5)


def test_fpn_odd_sizes_and_avg_fuse():
    torch.manual_seed(0)
    cfg = _cfg(3)
    cfg.MODEL.FPN.FUSE_TYPE = "avg"
    cfg.MODEL.FPN.TOP_BLOCK = False
    model = build_backbone(cfg)
    assert set(model.output_shape()) == {"p2", "p3", "p4", "p5"}
    x = torch.randn(1, 1, 9, 23, 41)  # not divisible by anything
    out = model(x)
    bottom = model.bottom_up(x)
    for level in range(2, 6):
        assert out[f"p{level}"].shape[2:] == bottom[f"res{level}"].shape[2:]
    cfg.MODEL.FPN.FUSE_TYPE = "max"
    with pytest.raises(ValueError, match="fuse_type"):
        build_backbone(cfg)


def test_fpn_in_features_subset_and_errors():
    cfg = _cfg(2)
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    model = build_backbone(cfg)
    assert list(model.output_shape()) == ["p3", "p4", "p5", "p6"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res4"]
    with pytest.raises(ValueError, match="double"):
        build_backbone(cfg)


def test_build_backbone_default_input_channels_and_type_check():
    cfg = _cfg(2)
    cfg.MODEL.PIXEL_MEAN = [0.5, 0.5]
    cfg.MODEL.PIXEL_STD = [0.2, 0.2]
    model = build_backbone(cfg)
    assert model.bottom_up.stem.conv1.in_channels == 2
    assert isinstance(model, Backbone) and isinstance(model.bottom_up, ResNet)

    name = "_test_not_a_backbone_det3d"
    if name not in BACKBONE_REGISTRY:

        def _test_not_a_backbone_det3d(cfg, input_shape):
            return nn.Identity()

        BACKBONE_REGISTRY.register(_test_not_a_backbone_det3d)
    cfg.MODEL.BACKBONE.NAME = name
    with pytest.raises(TypeError, match=name):
        build_backbone(cfg)
