import pytest
import torch
from _backbone_test_utils import (
    check_outputs_match_output_shape,
    forward_backward,
    tiny_backbone_cfg,
)
from _rcnn_test_utils import single_thread

from det3d.layers import ShapeSpec
from det3d.modeling.backbone import (
    FPN,
    ConvNeXt,
    ConvNeXtBlock,
    build_backbone,
    build_convnext_backbone,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.mark.parametrize("ndim", [2, 3])
def test_convnext_fpn_strides_channels_forward_backward(ndim):
    torch.manual_seed(0)
    cfg = tiny_backbone_cfg("convnext", ndim)
    model = build_backbone(cfg)
    assert isinstance(model, FPN) and isinstance(model.bottom_up, ConvNeXt)
    trunk = model.bottom_up.output_shape()
    stem = (2, 4, 4)[-ndim:]
    for k, name in enumerate(["stage2", "stage3", "stage4", "stage5"]):
        assert trunk[name].stride == tuple(s * 2**k for s in stem)
        assert trunk[name].channels == [8, 16, 24, 32][k]
    strides = {k: v.stride for k, v in model.output_shape().items()}
    assert strides["p2"] == stem and strides["p6"] == tuple(s * 16 for s in stem)
    assert model.size_divisibility == tuple(s * 8 for s in stem)
    size = (16, 64, 64)[-ndim:]
    check_outputs_match_output_shape(model, torch.randn(2, 1, *size))
    forward_backward(model, torch.randn(1, 1, *size))


def test_convnext_any_input_size_and_smaller_than_the_stem():
    torch.manual_seed(0)
    model = build_backbone(tiny_backbone_cfg("convnext", 3)).eval()
    # not a multiple of the strides, and smaller than the stem's 2 x 4 x 4 patch on two axes
    check_outputs_match_output_shape(model, torch.randn(1, 1, 5, 3, 37))
    check_outputs_match_output_shape(model, torch.randn(1, 1, 1, 2, 2))


def test_convnext_block_is_residual_with_layer_scale():
    torch.manual_seed(0)
    block = ConvNeXtBlock(3, 8, (3, 5, 5), layer_scale_init=1e-6)
    x = torch.randn(2, 8, 4, 6, 6)
    # the tiny layer scale makes a new block nearly the identity
    assert torch.allclose(block(x), x, atol=1e-4)
    assert block.gamma.shape == (8,) and block.dwconv.groups == 8
    assert ConvNeXtBlock(2, 8, (7, 7), layer_scale_init=0).gamma is None


def test_convnext_freeze_and_bad_keys():
    cfg = tiny_backbone_cfg("convnext", 3)
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    model = build_convnext_backbone(cfg, ShapeSpec(channels=1))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("downsample_layers.0.", "stages.0.")) for n in frozen)
    assert any(n.startswith("stages.0.") for n in frozen)

    cfg = tiny_backbone_cfg("convnext", 3)
    cfg.MODEL.CONVNEXT.DOWNSAMPLE_STRIDES = [2, 2]
    with pytest.raises(ValueError, match="MODEL.CONVNEXT.DOWNSAMPLE_STRIDES"):
        build_backbone(cfg)
    cfg = tiny_backbone_cfg("convnext", 3)
    cfg.MODEL.CONVNEXT.STEM_STRIDE = [4, 4]
    with pytest.raises(ValueError, match="MODEL.CONVNEXT.STEM_STRIDE"):
        build_backbone(cfg)
    cfg = tiny_backbone_cfg("convnext", 3)
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3"]
    with pytest.raises(ValueError, match="MODEL.FPN.IN_FEATURES"):
        build_backbone(cfg)


def test_convnext_builds_only_the_stages_it_outputs():
    torch.manual_seed(0)
    cfg = tiny_backbone_cfg("convnext", 3)
    cfg.MODEL.CONVNEXT.OUT_FEATURES = ["stage2", "stage3"]
    model = build_convnext_backbone(cfg, ShapeSpec(channels=1))
    assert len(model.stages) == 2 and len(model.downsample_layers) == 2
    assert model.size_divisibility == (4, 8, 8)
    forward_backward(model, torch.randn(1, 1, 8, 16, 16))  # every parameter gets a gradient
