import math

import pytest
import torch

from det3d.config import get_cfg
from det3d.layers import ShapeSpec
from det3d.modeling.anchor_generator import DefaultAnchorGenerator3D, build_anchor_generator
from det3d.modeling.proposal_generator.rpn import (
    StandardRPNHead3D,
    flatten_anchor_deltas,
    flatten_objectness_logits,
)


def _cell_reference(sizes, ratios, z_ratios, ndim):
    out = []
    for s in sizes:
        for a in ratios:
            w, h = s / math.sqrt(a), s * math.sqrt(a)
            if ndim == 2:
                out.append([-w / 2, -h / 2, w / 2, h / 2])
            else:
                for r in z_ratios:
                    out.append([-w / 2, -h / 2, -s * r / 2, w / 2, h / 2, s * r / 2])
    return torch.tensor(out)


def test_from_config_3d():
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.ANCHOR_GENERATOR.Z_ASPECT_RATIOS = [[0.5, 1.0]]
    shapes = [ShapeSpec(channels=8, stride=(1, 4, 4)), ShapeSpec(channels=8, stride=(2, 8, 8))]
    gen = build_anchor_generator(cfg, shapes)
    assert isinstance(gen, DefaultAnchorGenerator3D)
    assert gen.num_anchors == [6, 6] and gen.num_cell_anchors == [6, 6] and gen.box_dim == 6
    feats = [torch.zeros(2, 8, 3, 5, 7), torch.zeros(2, 8, 2, 3, 4)]
    anchors = gen(feats)
    assert [len(a) for a in anchors] == [3 * 5 * 7 * 6, 2 * 3 * 4 * 6]
    for a, sizes in zip(list(gen.cell_anchors), ([8], [16])):
        torch.testing.assert_close(a, _cell_reference(sizes, [0.5, 1.0, 2.0], [0.5, 1.0], 3))


def test_from_config_rejects_wrong_ndim():
    cfg = get_cfg()
    cfg.MODEL.SPATIAL_DIMS = 2
    with pytest.raises(ValueError, match="SPATIAL_DIMS"):
        build_anchor_generator(cfg, [ShapeSpec(8, (1, 4, 4))] * 5)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_centres_on_anisotropic_grid_and_order(offset):
    strides = (2, 4, 8)  # D, H, W
    gen = DefaultAnchorGenerator3D(
        sizes=[[4, 8]],
        aspect_ratios=[[1.0, 4.0]],
        z_aspect_ratios=[[0.5]],
        strides=[strides],
        offset=offset,
    )
    D, H, W, A = 3, 4, 5, 4
    anchors = gen([torch.zeros(1, 1, D, H, W)])[0].tensor
    assert anchors.shape == (D * H * W * A, 6)
    cell = _cell_reference([4, 8], [1.0, 4.0], [0.5], 3)
    for k in range(D):
        for i in range(H):
            for j in range(W):
                for c in range(A):
                    row = ((k * H + i) * W + j) * A + c
                    centre = torch.tensor(
                        [
                            (j + offset) * strides[2],
                            (i + offset) * strides[1],
                            (k + offset) * strides[0],
                        ]
                    )
                    expected = torch.cat([centre, centre]) + cell[c]
                    torch.testing.assert_close(anchors[row], expected)


def test_2d_ignores_z_ratios():
    gen = DefaultAnchorGenerator3D(
        sizes=[[16], [32]],
        aspect_ratios=[0.5, 2.0],
        z_aspect_ratios=[[0.1, 0.2, 0.3]],
        strides=[(4, 4), (8, 8)],
    )
    assert gen.box_dim == 4 and gen.num_anchors == [2, 2]
    anchors = gen([torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 1, 2)])
    assert anchors[0].tensor.shape == (2 * 3 * 2, 4)
    sizes = anchors[1].sizes()
    torch.testing.assert_close(
        sizes[:2],
        torch.tensor(
            [[32 / math.sqrt(0.5), 32 * math.sqrt(0.5)], [32 / math.sqrt(2), 32 * math.sqrt(2)]]
        ),
    )
    # second location of level 1 is one x stride further
    torch.testing.assert_close(anchors[1].centers()[2], torch.tensor([8.0, 0.0]))


def test_broadcast_errors_and_offset():
    with pytest.raises(ValueError, match="SIZES"):
        DefaultAnchorGenerator3D(
            sizes=[[8], [16], [32]], aspect_ratios=[[1.0]], strides=[(4, 4, 4), (8, 8, 8)]
        )
    with pytest.raises(ValueError, match="offset"):
        DefaultAnchorGenerator3D(
            sizes=[[8]], aspect_ratios=[[1.0]], strides=[(4, 4, 4)], offset=1.0
        )
    with pytest.raises(ValueError, match="levels"):
        DefaultAnchorGenerator3D(sizes=[[8]], aspect_ratios=[[1.0]], strides=[(4, 4, 4)])(
            [torch.zeros(1, 1, 2, 2, 2)] * 2
        )


def test_unequal_anchor_counts_rejected_by_head():
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16, 32]]
    shapes = [ShapeSpec(8, (4, 4, 4)), ShapeSpec(8, (8, 8, 8))]
    with pytest.raises(ValueError, match="same number of anchors"):
        StandardRPNHead3D(cfg, shapes)


@pytest.mark.parametrize("ndim", [2, 3])
def test_head_flattening_matches_anchor_order(ndim):
    """Each flattened head output row must describe the anchor of the same row."""
    strides = (2, 4, 8)[-ndim:]
    spatial = (2, 3, 4)[-ndim:]
    gen = DefaultAnchorGenerator3D(
        sizes=[[4, 8]], aspect_ratios=[[0.5, 1.0, 2.0]], z_aspect_ratios=[[1.0]], strides=[strides]
    )
    A, B = gen.num_anchors[0], gen.box_dim
    anchors = gen([torch.zeros((1, 1) + spatial)])[0]
    centres = anchors.centers()  # (R, ndim) x, y[, z]
    sizes = anchors.sizes()
    cell_sizes = gen.generate_cell_anchors([4, 8], [0.5, 1.0, 2.0], [1.0])
    cell_sizes = cell_sizes[:, ndim:] - cell_sizes[:, :ndim]

    # a fake head output whose value says (cell anchor, location, coordinate)
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in spatial], indexing="ij")
    logits = torch.zeros((1, A) + spatial)
    deltas = torch.zeros((1, A * B) + spatial)
    loc_code = sum(g * 10 ** (ndim - 1 - a) for a, g in enumerate(grids))  # digit per array axis
    for a in range(A):
        logits[0, a] = 1000 * a + loc_code
        for k in range(B):
            deltas[0, a * B + k] = 10000 * a + 1000 * k + loc_code
    flat_logits = flatten_objectness_logits(logits)[0]
    flat_deltas = flatten_anchor_deltas(deltas, B)[0]
    assert flat_logits.shape == (anchors.tensor.shape[0],)
    assert flat_deltas.shape == (anchors.tensor.shape[0], B)
    for r in range(len(anchors)):
        a = int(flat_logits[r]) // 1000
        loc = int(flat_logits[r]) % 1000
        idx = [(loc // 10 ** (ndim - 1 - ax)) % 10 for ax in range(ndim)]  # array order
        expected_centre = torch.tensor(
            [idx[ndim - 1 - c] * strides[ndim - 1 - c] for c in range(ndim)], dtype=torch.float32
        )
        torch.testing.assert_close(centres[r], expected_centre)
        torch.testing.assert_close(sizes[r], cell_sizes[a])
        for k in range(B):
            assert int(flat_deltas[r, k]) == 10000 * a + 1000 * k + loc
