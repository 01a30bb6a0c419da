import math

import pytest
import torch
from _backbone_test_utils import (
    check_outputs_match_output_shape,
    forward_backward,
    tiny_backbone_cfg,
)
from _rcnn_test_utils import single_thread

from det3d.modeling.backbone import SimpleFeaturePyramid, ViT, build_backbone
from det3d.modeling.backbone.vit import Attention, ViTBlock


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.mark.parametrize("ndim", [2, 3])
def test_vitdet_strides_channels_forward_backward(ndim):
    torch.manual_seed(0)
    model = build_backbone(tiny_backbone_cfg("vit", ndim))
    assert isinstance(model, SimpleFeaturePyramid) and isinstance(model.net, ViT)
    patch = (4, 16, 16)[-ndim:]
    assert model.net.output_shape()["last_feat"].stride == patch
    strides = {k: v.stride for k, v in model.output_shape().items()}
    # z is never upsampled below stride 1: the anisotropic ResNet-FPN's strides
    expected = {
        3: {"p2": (1, 4, 4), "p3": (2, 8, 8), "p4": (4, 16, 16), "p5": (8, 32, 32),
            "p6": (16, 64, 64)},
        2: {"p2": (4, 4), "p3": (8, 8), "p4": (16, 16), "p5": (32, 32), "p6": (64, 64)},
    }[ndim]  # fmt: skip
    assert strides == expected
    assert all(v.channels == 8 for v in model.output_shape().values())
    assert model.size_divisibility == expected["p5"]
    size = (16, 64, 64)[-ndim:]
    check_outputs_match_output_shape(model, torch.randn(2, 1, *size))
    forward_backward(model, torch.randn(1, 1, *size))


def test_vitdet_volume_smaller_than_the_patch_is_padded():
    torch.manual_seed(0)
    model = build_backbone(tiny_backbone_cfg("vit", 3)).eval()
    check_outputs_match_output_shape(model, torch.randn(1, 1, 3, 10, 70))


def _naive_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + rel_pos) v, written out, for a (B, *grid, C) map."""
    B, grid, C = x.shape[0], x.shape[1:-1], x.shape[-1]
    N, heads = math.prod(grid), attn.num_heads
    d = C // heads
    q, k, v = attn.qkv(x.reshape(B, N, C)).reshape(B, N, 3, heads, d).unbind(2)
    coords = torch.cartesian_prod(*[torch.arange(g) for g in grid]).view(N, len(grid))
    out = torch.zeros(B, N, heads, d)
    for h in range(heads):
        logits = q[:, :, h] @ k[:, :, h].transpose(1, 2) / math.sqrt(d)
        if attn.use_rel_pos:
            for a, name in enumerate(attn.rel_pos_names):
                table = getattr(attn, name)
                offset = coords[:, None, a] - coords[None, :, a] + grid[a] - 1
                logits = logits + torch.einsum("bic,ijc->bij", q[:, :, h], table[offset])
        out[:, :, h] = logits.softmax(-1) @ v[:, :, h]
    return attn.proj(out.reshape(B, N, C)).reshape(x.shape)


@pytest.mark.parametrize("use_rel_pos", [False, True])
def test_attention_matches_naive_attention(use_rel_pos):
    torch.manual_seed(0)
    attn = Attention(8, num_heads=2, use_rel_pos=use_rel_pos, rel_pos_grid=(2, 3, 3))
    for name in attn.rel_pos_names:
        torch.nn.init.normal_(getattr(attn, name))
    x = torch.randn(2, 2, 3, 3, 8)
    torch.testing.assert_close(attn(x), _naive_attention(attn, x), rtol=1e-4, atol=1e-5)


def test_windowed_blocks_attend_within_windows_and_global_ones_everywhere():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 6, 8)
    changed = x.clone()
    changed[0, 3, 5, 5] += torch.randn(8)  # a token in the last window (not a constant shift,
    # which the LayerNorm would remove)
    windowed = ViTBlock(8, 2, window_size=(2, 3, 3)).eval()
    glob = ViTBlock(8, 2, window_size=None).eval()
    with torch.no_grad():
        delta_w = (windowed(changed) - windowed(x)).abs().sum(-1)[0]
        delta_g = (glob(changed) - glob(x)).abs().sum(-1)[0]
    assert delta_w[:2].max() == 0 and delta_w[:, :3].max() == 0  # other windows unaffected
    assert delta_w[2:, 3:, 3:].min() > 0  # its own window is
    assert delta_g.min() > 0


def test_activation_checkpointing_gives_the_same_gradients():
    cfg = tiny_backbone_cfg("vit", 3)
    grads = []
    for use in (False, True):
        torch.manual_seed(0)
        cfg.MODEL.VIT.USE_ACT_CHECKPOINT = use
        model = build_backbone(cfg)
        assert model.net.use_act_checkpoint is use
        x = torch.randn(1, 1, 16, 64, 64)
        sum(o.square().mean() for o in model(x).values()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("WINDOW_BLOCK_INDEXES", [0, 5], "MODEL.VIT.WINDOW_BLOCK_INDEXES"),
        ("WINDOW_SIZE", [0, 3, 3], "MODEL.VIT.WINDOW_SIZE"),
        ("NUM_HEADS", 3, "MODEL.VIT.NUM_HEADS"),
        ("PATCH_SIZE", [4, 16], "MODEL.VIT.PATCH_SIZE"),
        ("SCALE_FACTORS", [3.0, 1.0], "MODEL.VIT.SCALE_FACTORS"),
        ("PATCH_SIZE", [4, 12, 12], "MODEL.VIT.PATCH_SIZE"),
    ],
)
def test_vitdet_bad_keys(key, value, match):
    cfg = tiny_backbone_cfg("vit", 3)
    cfg.MODEL.VIT[key] = value
    with pytest.raises(ValueError, match=match):
        build_backbone(cfg)


def test_vitdet_freeze():
    cfg = tiny_backbone_cfg("vit", 3)
    cfg.MODEL.BACKBONE.FREEZE_AT = 1
    model = build_backbone(cfg)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"net.pos_embed", "net.patch_embed.proj.weight", "net.patch_embed.proj.bias"}
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    with pytest.raises(ValueError, match="MODEL.BACKBONE.FREEZE_AT"):
        build_backbone(cfg)
