import math

import pytest
import torch

from det3d.modeling.backbone.transformer_utils import (
    PatchEmbed,
    crop_to_stride,
    get_rel_pos,
    pad_to_multiple,
    rel_pos_bias,
    resize_abs_pos_embed,
    window_partition,
    window_unpartition,
)


@pytest.mark.parametrize(
    "grid, window",
    [((6, 8), (3, 4)), ((5, 7), (2, 3)), ((4, 6, 6), (2, 3, 3)), ((5, 6, 7), (2, 4, 3))],
)
def test_window_partition_round_trip_and_window_contents(grid, window):
    torch.manual_seed(0)
    x = torch.randn(2, *grid, 3)
    windows, padded = window_partition(x, window)
    assert padded == tuple(math.ceil(g / w) * w for g, w in zip(grid, window))
    counts = [p // w for p, w in zip(padded, window)]
    assert windows.shape == (2 * math.prod(counts), *window, 3)
    # exact round trip, padding removed
    assert torch.equal(window_unpartition(windows, window, padded, grid), x)
    # reference: window k (C order over the window grid, batch outermost) is that slice of the
    # zero-padded map
    padded_x = torch.zeros(2, *padded, 3)
    padded_x[(slice(None),) + tuple(slice(0, g) for g in grid)] = x
    k = 0
    for b in range(2):
        for index in torch.cartesian_prod(*[torch.arange(c) for c in counts]).view(-1, len(grid)):
            region = tuple(slice(int(i) * w, (int(i) + 1) * w) for i, w in zip(index, window))
            assert torch.equal(windows[k], padded_x[(b,) + region])
            k += 1


def test_resize_abs_pos_embed():
    torch.manual_seed(0)
    pos = torch.randn(1, 2 * 3 * 4, 5)
    same = resize_abs_pos_embed(pos, (2, 3, 4), (2, 3, 4))
    assert torch.equal(same.reshape(1, -1, 5), pos)
    bigger = resize_abs_pos_embed(pos, (2, 3, 4), (4, 6, 8))
    assert bigger.shape == (1, 4, 6, 8, 5)
    # a constant embedding stays constant under interpolation
    const = torch.ones(1, 12, 2)
    assert torch.allclose(resize_abs_pos_embed(const, (3, 4), (5, 7)), torch.ones(1, 5, 7, 2))
    with pytest.raises(ValueError, match="tokens"):
        resize_abs_pos_embed(pos, (2, 3, 3), (2, 3, 4))


def test_rel_pos_bias_matches_a_loop():
    torch.manual_seed(0)
    grid, C = (2, 3, 4), 5
    tables = [torch.randn(2 * g - 1, C) for g in grid]
    q = torch.randn(2, math.prod(grid), C)
    bias = rel_pos_bias(q, tables, grid, grid)
    coords = torch.cartesian_prod(*[torch.arange(g) for g in grid])
    expected = torch.zeros(2, len(coords), len(coords))
    for i, ci in enumerate(coords):
        for j, cj in enumerate(coords):
            for a in range(3):
                # table index of offset ci - cj, shifted to be >= 0
                expected[:, i, j] += q[:, i] @ tables[a][int(ci[a] - cj[a]) + grid[a] - 1]
    torch.testing.assert_close(bias, expected, rtol=1e-5, atol=1e-5)
    # a table learnt for another size is resized to 2 * size - 1 entries
    assert get_rel_pos(3, 3, torch.randn(9, C)).shape == (3, 3, C)


def test_pad_and_crop():
    x = torch.randn(1, 2, 5, 7)
    padded = pad_to_multiple(x, (4, 4))
    assert padded.shape == (1, 2, 8, 8)
    assert torch.equal(padded[:, :, :5, :7], x) and padded[:, :, 5:].abs().sum() == 0
    assert pad_to_multiple(x, (5, 7)) is x
    assert crop_to_stride(torch.randn(1, 2, 4, 4), (5, 7), (2, 2)).shape == (1, 2, 3, 4)


def test_patch_embed_rejects_input_smaller_than_the_patch():
    embed = PatchEmbed(3, 1, 8, (4, 16, 16), (4, 16, 16), key="MODEL.VIT.PATCH_SIZE")
    assert embed(torch.randn(1, 1, 8, 32, 16)).shape == (1, 2, 2, 1, 8)
    with pytest.raises(ValueError, match=r"MODEL.VIT.PATCH_SIZE=\[4, 16, 16\]"):
        embed(torch.randn(1, 1, 8, 8, 32))
