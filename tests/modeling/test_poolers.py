"""ROIPooler and level assignment against slow, obviously-correct references."""

import itertools
import math

import numpy as np
import pytest
import torch

from det3d.modeling.poolers import ROIPooler, assign_boxes_to_levels
from det3d.structures import Boxes


def _ref_level(box, canonical_box_size, canonical_level, min_level, max_level):
    ndim = len(box) // 2
    volume = 1.0
    for k in range(ndim):
        volume *= box[ndim + k] - box[k]
    side = volume ** (1.0 / ndim)
    level = math.floor(canonical_level + math.log2(side / canonical_box_size + 1e-8))
    return min(max(level, min_level), max_level)


def _ref_interp(feat, point):
    """N-D linear interpolation with RoIAlign's border rules; feat (*S), point per array axis."""
    weights_per_axis = []
    for y, size in zip(point, feat.shape):
        if y < -1.0 or y > size:
            return 0.0
        y = max(y, 0.0)
        low = int(math.floor(y))
        if low >= size - 1:
            low = high = size - 1
            y = float(low)
        else:
            high = low + 1
        frac = y - low
        weights_per_axis.append([(low, 1.0 - frac), (high, frac)])
    value = 0.0
    for combo in itertools.product(*weights_per_axis):
        idx = tuple(c[0] for c in combo)
        w = np.prod([c[1] for c in combo])
        value += w * feat[idx]
    return value


def _ref_roi_align(feat, box, scale, output_size, sampling_ratio, aligned):
    """feat (C, *S) numpy; box (2*ndim,) image coords; scale per array axis."""
    ndim = feat.ndim - 1
    offset = 0.5 if aligned else 0.0
    starts, bins, grids = [], [], []
    for a in range(ndim):
        k = ndim - 1 - a
        start = box[k] * scale[a] - offset
        end = box[ndim + k] * scale[a] - offset
        size = end - start
        if not aligned:
            size = max(size, 1.0)
        bin_size = size / output_size[a]
        grid = sampling_ratio if sampling_ratio > 0 else int(math.ceil(size / output_size[a]))
        starts.append(start)
        bins.append(bin_size)
        grids.append(max(grid, 1))
    out = np.zeros((feat.shape[0],) + tuple(output_size))
    for p in itertools.product(*[range(o) for o in output_size]):
        samples = itertools.product(*[range(g) for g in grids])
        acc = np.zeros(feat.shape[0])
        count = 0
        for s in samples:
            point = [
                starts[a] + p[a] * bins[a] + (s[a] + 0.5) * bins[a] / grids[a] for a in range(ndim)
            ]
            for c in range(feat.shape[0]):
                acc[c] += _ref_interp(feat[c], point)
            count += 1
        out[(slice(None),) + p] = acc / count
    return out


def _random_boxes(g, n, image_shape, min_side, max_side):
    ndim = len(image_shape)
    limits = list(reversed(image_shape))  # per box coordinate
    boxes = []
    for _ in range(n):
        lo, hi = [], []
        for k in range(ndim):
            side = min_side + (max_side - min_side) * torch.rand(1, generator=g).item()
            side = min(side, limits[k] - 1)
            start = (limits[k] - side) * torch.rand(1, generator=g).item()
            lo.append(start)
            hi.append(start + side)
        boxes.append(lo + hi)
    return torch.tensor(boxes, dtype=torch.float32)


@pytest.mark.parametrize("ndim", [2, 3])
def test_assign_boxes_to_levels_matches_formula(ndim):
    g = torch.Generator().manual_seed(0)
    shape = (64,) * ndim
    boxes = [Boxes(_random_boxes(g, 40, shape, 1, 60)), Boxes(_random_boxes(g, 7, shape, 1, 60))]
    levels = assign_boxes_to_levels(boxes, 2, 5, 16, 4)
    expected = [_ref_level(b.tolist(), 16, 4, 2, 5) - 2 for bl in boxes for b in bl.tensor]
    assert levels.tolist() == expected
    assert set(expected) == {0, 1, 2, 3}  # the random boxes cover every level


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("ndim", [2, 3])
def test_pooler_matches_reference(ndim, aligned, sampling_ratio):
    g = torch.Generator().manual_seed(1)
    # Anisotropic in 3D: z is downsampled half as much as y and x.
    strides = [(1, 4, 4), (2, 8, 8), (4, 16, 16)] if ndim == 3 else [(4, 4), (8, 8), (16, 16)]
    image_shape = (16, 48, 48) if ndim == 3 else (48, 48)
    features = [
        torch.randn(
            (2, 3) + tuple(math.ceil(s / st) for s, st in zip(image_shape, stride)), generator=g
        )
        for stride in strides
    ]
    box_lists = [
        Boxes(_random_boxes(g, 5, image_shape, 2, 40)),
        Boxes(_random_boxes(g, 4, image_shape, 2, 40)),
    ]
    output_size = (2, 3, 3)[-ndim:]
    pooler = ROIPooler(
        output_size=output_size,
        scales=[tuple(1.0 / s for s in st) for st in strides],
        sampling_ratio=sampling_ratio,
        pooler_type="ROIAlignV2" if aligned else "ROIAlign",
        canonical_box_size=16,
        canonical_level=3,
        ndim=ndim,
    )
    out = pooler(features, box_lists)
    assert out.shape == (9, 3) + output_size

    row = 0
    for img, boxes in enumerate(box_lists):
        for box in boxes.tensor:
            level = _ref_level(box.tolist(), 16, 3, 2, 4) - 2
            scale = [1.0 / s for s in strides[level]]
            ref = _ref_roi_align(
                features[level][img].double().numpy(),
                box.double().numpy(),
                scale,
                output_size,
                sampling_ratio,
                aligned,
            )
            np.testing.assert_allclose(out[row].numpy(), ref, rtol=1e-4, atol=1e-5)
            row += 1


def test_pooler_empty_and_errors():
    pooler = ROIPooler(7, scales=[1 / 4, 1 / 8], sampling_ratio=0, pooler_type="ROIAlignV2", ndim=3)
    feats = [torch.zeros(1, 4, 4, 8, 8), torch.zeros(1, 4, 2, 4, 4)]
    out = pooler(feats, [Boxes(torch.zeros(0, 6))])
    assert out.shape == (0, 4, 7, 7, 7)
    with pytest.raises(ValueError, match="pooler type"):
        ROIPooler(7, scales=[1 / 4], sampling_ratio=0, pooler_type="ROIPool", ndim=3)
    with pytest.raises(ValueError, match="power of 2"):
        ROIPooler(7, scales=[1 / 3], sampling_ratio=0, pooler_type="ROIAlignV2", ndim=3)
    with pytest.raises(ValueError, match="feature maps"):
        pooler(feats[:1], [Boxes(torch.zeros(0, 6))])
