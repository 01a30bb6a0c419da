"""2D ImageNet-style state dicts (random, saved to disk) loaded into 3D backbones."""

import os
import sys

import pytest
import torch

from det3d.checkpoint import CheckpointError, inflate_state_dict, load_2d_pretrained
from det3d.layers import ShapeSpec
from det3d.modeling.backbone import (
    build_backbone,
    build_convnext_backbone,
    build_hiera_backbone,
    build_vit_backbone,
)

# the tiny backbone configs of the backbone tests
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "modeling"))
from _backbone_test_utils import tiny_backbone_cfg  # noqa: E402

RGB = ShapeSpec(channels=3)
GRAY = ShapeSpec(channels=1)


def _save(tmp_path, state, name="pretrained.pth", nest="model"):
    path = str(tmp_path / name)
    torch.save({nest: state} if nest else state, path)
    return path


def _convnext_cfg(ndim):
    cfg = tiny_backbone_cfg("convnext", ndim)
    cfg.MODEL.CONVNEXT.STEM_STRIDE = [1, 4, 4]
    cfg.MODEL.CONVNEXT.KERNEL_SIZE = [1, 7, 7]  # z-constant inputs stay z-constant
    cfg.MODEL.CONVNEXT.DROP_PATH_RATE = 0.0
    return cfg


def test_convnext_2d_weights_give_the_2d_response_on_z_constant_volumes(tmp_path):
    torch.manual_seed(0)
    net2d = build_convnext_backbone(_convnext_cfg(2), RGB).eval()
    state = dict(net2d.state_dict())
    state["head.weight"] = torch.randn(10, 32)  # the classifier of an ImageNet checkpoint
    path = _save(tmp_path, state)

    cfg = _convnext_cfg(3)
    cfg.MODEL.CONVNEXT.PRETRAINED = path
    net3d = build_convnext_backbone(cfg, GRAY).eval()
    # the stem takes one channel: the RGB kernels are summed
    stem2d = state["downsample_layers.0.0.weight"]
    assert torch.equal(net3d.downsample_layers[0][0].weight[:, :, 0], stem2d.sum(1, keepdim=True))
    # downsampling kernels (2, 2, 2) from 2x2: repeated along z and halved
    down = net3d.downsample_layers[1][1].weight
    expected = state["downsample_layers.1.1.weight"][:, :, None].repeat(1, 1, 2, 1, 1) / 2
    assert torch.allclose(down, expected)

    image = torch.rand(1, 1, 32, 32)
    volume = image[:, :, None].repeat(1, 1, 8, 1, 1)  # the image on every z slice
    with torch.no_grad():
        out2d = net2d(image.repeat(1, 3, 1, 1))  # gray as RGB = summed kernels on one channel
        out3d = net3d(volume)
    for name, feat in out2d.items():
        for z in range(out3d[name].shape[2]):
            torch.testing.assert_close(out3d[name][:, :, z], feat, rtol=1e-4, atol=1e-5)


def test_inflation_divides_by_the_depth_and_reports(tmp_path):
    torch.manual_seed(0)
    net2d = build_convnext_backbone(tiny_backbone_cfg("convnext", 2), RGB)
    src = dict(net2d.state_dict())
    src["head.weight"] = torch.randn(10, 32)
    del src["stages.0.0.gamma"]
    net3d = build_convnext_backbone(tiny_backbone_cfg("convnext", 3), GRAY)  # dw kernel (3, 7, 7)
    state, report = inflate_state_dict(src, net3d)
    dw = state["stages.1.0.dwconv.weight"]
    assert dw.shape == (16, 1, 3, 7, 7)
    for z in range(3):
        assert torch.equal(dw[:, :, z], src["stages.1.0.dwconv.weight"] / 3)
    assert "head.weight" in report["unused"]
    assert report["missing"] == ["stages.0.0.gamma"]
    assert any(r.startswith("stages.1.0.dwconv.weight") for r in report["inflated"])
    assert "stages.1.0.pwconv1.weight" in report["copied"]
    assert not report["skipped"]


def test_vit_position_embeddings_and_relative_tables(tmp_path):
    torch.manual_seed(0)
    cfg2d = tiny_backbone_cfg("vit", 2)
    cfg2d.MODEL.VIT.PRETRAIN_IMG_SIZE = [64, 64, 64]  # a 4 x 4 grid of 16-voxel patches
    vit2d = build_vit_backbone(cfg2d, RGB)
    src = dict(vit2d.state_dict())
    C = src["pos_embed"].shape[-1]
    # MAE-style: a class token first, dropped on loading
    src["pos_embed"] = torch.cat([torch.randn(1, 1, C), src["pos_embed"]], dim=1)
    src["cls_token"] = torch.randn(1, 1, C)
    src["blocks.1.attn.rel_pos_h"] = torch.randn(7, C // 2)  # global block, 2 * 4 - 1 rows
    path = _save(tmp_path, src, nest="")

    cfg = tiny_backbone_cfg("vit", 3)  # patch [4, 16, 16], grid (4, 4, 4)
    cfg.MODEL.VIT.PRETRAINED = path
    vit3d = build_backbone(cfg).net
    assert vit3d.pretrain_grid == (4, 4, 4)
    pos2d = src["pos_embed"][:, 1:].reshape(1, 4, 4, C)
    pos3d = vit3d.pos_embed.detach().reshape(1, 4, 4, 4, C)
    for z in range(4):  # the 2D grid on every z plane
        torch.testing.assert_close(pos3d[:, z], pos2d)
    assert torch.equal(vit3d.blocks[1].attn.rel_pos_h.detach(), src["blocks.1.attn.rel_pos_h"])
    assert vit3d.blocks[1].attn.rel_pos_d.abs().sum() == 0  # no z table in 2D: kept at zero
    kernel = vit3d.patch_embed.proj.weight.detach()
    assert torch.allclose(kernel[:, :, 1], src["patch_embed.proj.weight"].sum(1, keepdim=True) / 4)


def test_hiera_patch_embed_and_position_grid(tmp_path):
    torch.manual_seed(0)
    hiera2d = build_hiera_backbone(tiny_backbone_cfg("hiera", 2), RGB)
    src = dict(hiera2d.state_dict())
    path = _save(tmp_path, src, nest="model_state")  # the official Hiera checkpoints' layout
    hiera3d = build_hiera_backbone(tiny_backbone_cfg("hiera", 3), GRAY)
    report = load_2d_pretrained(hiera3d, path)
    assert not report["skipped"] and not report["missing"]
    assert hiera3d.patch_embed.proj.weight.shape[2:] == (3, 7, 7)
    assert torch.allclose(
        hiera3d.patch_embed.proj.weight.detach()[:, :, 2],
        src["patch_embed.proj.weight"].sum(1, keepdim=True) / 3,
    )
    grid = hiera3d.pretrain_grid  # (8, 16, 16)
    pos = hiera3d.pos_embed.detach().reshape(1, *grid, -1)
    torch.testing.assert_close(pos[:, 3], src["pos_embed"].reshape(1, 16, 16, -1))


def test_bad_pretrained_files(tmp_path):
    net = build_convnext_backbone(tiny_backbone_cfg("convnext", 3), GRAY)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_2d_pretrained(net, str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_2d_pretrained(net, str(junk))
    other = _save(tmp_path, {"fc.weight": torch.randn(3, 3)}, name="other.pth")
    with pytest.raises(CheckpointError, match="none of its 1 tensors fits ConvNeXt"):
        load_2d_pretrained(net, other)
