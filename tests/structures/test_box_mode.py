import itertools

import numpy as np
import pytest
import torch

from det3d.structures.boxes import BoxMode

MODES_2D = [BoxMode.XYXY_ABS, BoxMode.XYWH_ABS, BoxMode.XYXY_REL]
MODES_3D = [BoxMode.XYZXYZ_ABS, BoxMode.XYZWHD_ABS, BoxMode.XYZXYZ_REL, BoxMode.YXYXZZ_ABS]
SHAPE_2D = (40, 50)  # (H, W)
SHAPE_3D = (10, 40, 50)  # (D, H, W)


def corner_boxes(ndim, seed, n=4):
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0, 20, size=(n, ndim))
    return np.concatenate([lo, lo + rng.uniform(1, 10, size=(n, ndim))], axis=1)


def test_detectron2_values():
    assert (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS, BoxMode.XYXY_REL) == (0, 1, 2)


def test_known_conversions_3d():
    xyzxyz = [1.0, 2.0, 3.0, 5.0, 7.0, 9.0]
    assert BoxMode.convert(xyzxyz, BoxMode.XYZXYZ_ABS, BoxMode.XYZWHD_ABS) == [1, 2, 3, 4, 5, 6]
    # (y1, x1, y2, x2, z1, z2)
    assert BoxMode.convert(xyzxyz, BoxMode.XYZXYZ_ABS, BoxMode.YXYXZZ_ABS) == [2, 1, 7, 5, 3, 9]
    # normalised by (W, H, D) = reversed (D, H, W)
    rel = BoxMode.convert(xyzxyz, BoxMode.XYZXYZ_ABS, BoxMode.XYZXYZ_REL, SHAPE_3D)
    np.testing.assert_allclose(rel, [1 / 50, 2 / 40, 3 / 10, 5 / 50, 7 / 40, 9 / 10])


def test_known_conversions_2d():
    assert BoxMode.convert((1.0, 2.0, 4.0, 6.0), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS) == (1, 2, 3, 4)
    rel = BoxMode.convert([10.0, 20.0, 50.0, 40.0], BoxMode.XYXY_ABS, BoxMode.XYXY_REL, SHAPE_2D)
    np.testing.assert_allclose(rel, [0.2, 0.5, 1.0, 1.0])


@pytest.mark.parametrize(
    "modes,shape,ndim", [(MODES_2D, SHAPE_2D, 2), (MODES_3D, SHAPE_3D, 3)], ids=["2d", "3d"]
)
def test_round_trip_every_pair(modes, shape, ndim):
    corners = corner_boxes(ndim, seed=ndim)
    canonical = modes[0]
    for a, b in itertools.product(modes, modes):
        boxes_a = BoxMode.convert(corners, canonical, a, image_shape=shape)
        boxes_b = BoxMode.convert(boxes_a, a, b, image_shape=shape)
        back = BoxMode.convert(boxes_b, b, a, image_shape=shape)
        np.testing.assert_allclose(back, boxes_a, rtol=1e-12, atol=1e-12, err_msg=f"{a}->{b}")
        # and the path through b agrees with the direct conversion from corners
        np.testing.assert_allclose(
            boxes_b, BoxMode.convert(corners, canonical, b, image_shape=shape), rtol=1e-12
        )


def test_types_are_preserved():
    box = [1.0, 2.0, 3.0, 5.0, 7.0, 9.0]
    modes = (BoxMode.XYZXYZ_ABS, BoxMode.XYZWHD_ABS)
    assert isinstance(BoxMode.convert(box, *modes), list)
    assert isinstance(BoxMode.convert(tuple(box), *modes), tuple)
    arr = np.array([box], dtype=np.float32)
    out = BoxMode.convert(arr, *modes)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (1, 6)
    t = torch.tensor([box, box], dtype=torch.float64)
    out = BoxMode.convert(t, *modes)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == (2, 6)
    assert torch.equal(out[:, 3:], torch.tensor([[4.0, 5, 6]] * 2, dtype=torch.float64))
    assert t[0, 3] == 5.0  # input not modified
    single = BoxMode.convert(torch.tensor(box), *modes)
    assert single.shape == (6,)
    nested = BoxMode.convert([box, box], *modes)
    assert nested == [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]] * 2


def test_errors():
    box = [1.0, 2.0, 3.0, 5.0, 7.0, 9.0]
    with pytest.raises(ValueError, match="image_shape"):
        BoxMode.convert(box, BoxMode.XYZXYZ_ABS, BoxMode.XYZXYZ_REL)
    with pytest.raises(ValueError, match="3 entries"):
        BoxMode.convert(box, BoxMode.XYZXYZ_ABS, BoxMode.XYZXYZ_REL, image_shape=(4, 4))
    with pytest.raises(ValueError, match="XYXY_ABS"):
        BoxMode.convert(box, BoxMode.XYZXYZ_ABS, BoxMode.XYXY_ABS)
    with pytest.raises(ValueError, match=r"\(6,\)"):
        BoxMode.convert([1.0, 2, 3, 4], BoxMode.XYZXYZ_ABS, BoxMode.XYZWHD_ABS)
    # shape= is an alias of image_shape
    np.testing.assert_allclose(
        BoxMode.convert(box, BoxMode.XYZXYZ_ABS, BoxMode.XYZXYZ_REL, shape=SHAPE_3D),
        BoxMode.convert(box, BoxMode.XYZXYZ_ABS, BoxMode.XYZXYZ_REL, image_shape=SHAPE_3D),
    )
