import math

import pytest
import torch
import torch.nn.functional as F
from _backbone_test_utils import (
    check_outputs_match_output_shape,
    forward_backward,
    tiny_backbone_cfg,
)
from _rcnn_test_utils import single_thread

from det3d.layers import ShapeSpec
from det3d.modeling.backbone import FPN, Hiera, build_backbone
from det3d.modeling.backbone.hiera import MaskUnitAttention, build_hiera_backbone, reroll, unroll
from det3d.modeling.backbone.transformer_utils import window_partition, window_unpartition


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


CASES = [
    ((8, 12), [(2, 2), (2, 2)]),
    ((4, 8, 8), [(2, 2, 2), (2, 2, 2)]),
    ((2, 8, 12), [(1, 2, 2), (2, 2, 2), (1, 2, 1)]),
]


@pytest.mark.parametrize("grid, strides", CASES)
def test_unroll_reroll_round_trip(grid, strides):
    torch.manual_seed(0)
    x = torch.randn(2, *grid, 3)
    tokens = unroll(x, strides)
    assert tokens.shape == (2, math.prod(grid), 3)
    assert torch.equal(reroll(tokens, grid, strides), x)
    # after k poolings the rest of the order rerolls on the pooled grid
    pooled = tuple(g // s for g, s in zip(grid, strides[0]))
    chunk = tokens.reshape(2, math.prod(strides[0]), -1, 3)
    for j, offset in enumerate(torch.cartesian_prod(*[torch.arange(s) for s in strides[0]])):
        offset = offset.view(-1).tolist()
        sub = x[(slice(None),) + tuple(slice(o, None, s) for o, s in zip(offset, strides[0]))]
        # tokens with first-stride offset j are the strided sub-grid, itself unrolled
        assert torch.equal(reroll(chunk[:, j], pooled, strides[1:]), sub)


@pytest.mark.parametrize("grid, strides", CASES[:2])
def test_pooling_the_outermost_tokens_is_a_max_pool(grid, strides):
    torch.manual_seed(0)
    ndim = len(grid)
    x = torch.randn(2, *grid, 3)
    tokens = unroll(x, strides)
    q = math.prod(strides[0])
    pooled = tokens.reshape(2, q, -1, 3).amax(dim=1)
    grid1 = tuple(g // s for g, s in zip(grid, strides[0]))
    pool = F.max_pool3d if ndim == 3 else F.max_pool2d
    expected = pool(x.movedim(-1, 1), strides[0], strides[0]).movedim(1, -1)
    assert torch.equal(reroll(pooled, grid1, strides[1:]), expected)


def _window_attention_reference(attn: MaskUnitAttention, x: torch.Tensor, window) -> torch.Tensor:
    """Plain attention inside each spatial window of ``x`` (B, *grid, C), same weights."""
    grid = x.shape[1:-1]
    windows, padded = window_partition(x, window)
    W, n = windows.shape[0], math.prod(window)
    heads, d = attn.heads, attn.dim_out // attn.heads
    q, k, v = attn.qkv(windows.reshape(W, n, -1)).reshape(W, n, 3, heads, d).unbind(2)
    logits = torch.einsum("wihd,wjhd->whij", q, k) / math.sqrt(d)
    out = torch.einsum("whij,wjhd->wihd", logits.softmax(-1), v).reshape(W, n, -1)
    out = attn.proj(out).reshape(W, *window, -1)
    return window_unpartition(out, window, padded, grid)


@pytest.mark.parametrize("grid, strides", CASES[:2])
def test_mask_unit_attention_is_attention_within_spatial_mask_units(grid, strides):
    torch.manual_seed(0)
    x = torch.randn(2, *grid, 8)
    tokens = unroll(x, strides)
    for m in (1, 2):  # a mask unit of one or two strides per axis
        unit = tuple(math.prod(s[a] for s in strides[:m]) for a in range(len(grid)))
        attn = MaskUnitAttention(
            8, 8, heads=2, window_size=math.prod(unit), use_mask_unit_attn=True
        )
        out = reroll(attn(tokens), grid, strides)
        torch.testing.assert_close(
            out, _window_attention_reference(attn, x, unit), rtol=1e-4, atol=1e-5
        )
    # global attention: one window over everything
    attn = MaskUnitAttention(8, 8, heads=2, use_mask_unit_attn=False)
    out = reroll(attn(tokens), grid, strides)
    expected = _window_attention_reference(attn, x, grid)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_hiera_fpn_strides_channels_forward_backward(ndim):
    torch.manual_seed(0)
    model = build_backbone(tiny_backbone_cfg("hiera", ndim))
    assert isinstance(model, FPN) and isinstance(model.bottom_up, Hiera)
    trunk = model.bottom_up.output_shape()
    patch = (1, 4, 4)[-ndim:]
    for k, name in enumerate(["stage2", "stage3", "stage4", "stage5"]):
        assert trunk[name].stride == tuple(p * 2**k for p in patch)
        assert trunk[name].channels == 8 * 2**k
    assert model.bottom_up.size_divisibility == tuple(p * 8 for p in patch)
    size = (8, 64, 64)[-ndim:]
    check_outputs_match_output_shape(model, torch.randn(2, 1, *size))
    check_outputs_match_output_shape(model.bottom_up, torch.randn(1, 1, *size))
    forward_backward(model, torch.randn(1, 1, *size))


def test_hiera_any_input_size_is_padded():
    torch.manual_seed(0)
    model = build_backbone(tiny_backbone_cfg("hiera", 3)).eval()
    check_outputs_match_output_shape(model, torch.randn(1, 1, 3, 20, 70))


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("MASK_UNIT_SIZE", [4, 4, 3], "MODEL.HIERA.MASK_UNIT_SIZE"),
        ("MASK_UNIT_SIZE", [16, 16, 16], "MODEL.HIERA.MASK_UNIT_SIZE"),
        ("MASK_UNIT_ATTN", [True, True, True, False], "MODEL.HIERA.MASK_UNIT_ATTN"),
        ("MASK_UNIT_ATTN", [True, False], "MODEL.HIERA.MASK_UNIT_ATTN"),
        ("Q_STRIDE", [2, 2], "MODEL.HIERA.Q_STRIDE"),
    ],
)
def test_hiera_bad_keys(key, value, match):
    cfg = tiny_backbone_cfg("hiera", 3)
    cfg.MODEL.HIERA[key] = value
    with pytest.raises(ValueError, match=match):
        build_backbone(cfg)


def test_hiera_freeze():
    cfg = tiny_backbone_cfg("hiera", 3)
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    model = build_hiera_backbone(cfg, ShapeSpec(channels=1))
    frozen = {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters()
              if not p.requires_grad and n.startswith("blocks")}  # fmt: skip
    assert frozen == {"blocks.0"}  # stage2 = the first stage's single block
    assert not model.pos_embed.requires_grad
    assert model.blocks[1].attn.qkv.weight.requires_grad


def test_hiera_builds_only_the_stages_it_outputs():
    torch.manual_seed(0)
    cfg = tiny_backbone_cfg("hiera", 3)
    cfg.MODEL.HIERA.OUT_FEATURES = ["stage2", "stage3"]
    model = build_hiera_backbone(cfg, ShapeSpec(channels=1))
    assert len(model.blocks) == 2  # stages of 1 and 1 blocks
    assert model.size_divisibility == (8, 32, 32)  # the tokens are still unrolled for 4 stages
    check_outputs_match_output_shape(model, torch.randn(1, 1, 8, 32, 32))
    forward_backward(model, torch.randn(1, 1, 8, 32, 32))
