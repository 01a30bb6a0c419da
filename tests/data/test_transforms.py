import numpy as np
import pytest

from det3d.data.transforms import (
    AugInput,
    CropTransform,
    FlipTransform,
    IntensityTransform,
    PadTransform,
    RandomCrop,
    RandomFlip,
    RandomIntensity,
    RandomRotate90XY,
    RandomScale,
    ResampleTransform,
    Rot90Transform,
    apply_augmentations,
    check_scale_range,
)


def _pair(shape=(6, 10, 10), seed=0):
    labels = np.random.default_rng(seed).integers(0, 5, shape).astype(np.int32)
    return labels[None].astype(np.float32), labels


@pytest.mark.parametrize(
    "t",
    [
        CropTransform((1, 2, 3), (4, 5, 6)),
        PadTransform((1, 0, 2), (0, 3, 1)),
        FlipTransform((0, 2)),
        Rot90Transform(1),
        Rot90Transform(3),
        ResampleTransform((6, 10, 10), (2.0, 0.5, 1.0)),
    ],
)
def test_transform_keeps_image_and_labels_aligned(t):
    image, labels = _pair()
    out_i, out_l = t.apply_image(image), t.apply_labels(labels)
    assert out_i.shape[1:] == out_l.shape == t.output_shape(labels.shape)
    if isinstance(t, ResampleTransform):  # linear vs nearest: agree where the image is flat
        assert out_l.shape == (12, 5, 10)
        return
    np.testing.assert_array_equal(out_i[0], out_l)


def test_resample_nearest_labels_match_image_on_constant_regions():
    labels = np.zeros((4, 8, 8), np.int32)
    labels[:, :4] = 3
    t = ResampleTransform(labels.shape, (2.0, 2.0, 2.0))
    out_l, out_i = t.apply_labels(labels), t.apply_image(labels[None].astype(np.float32))[0]
    flat = (out_i == 0) | (out_i == 3)
    assert flat.mean() > 0.8
    np.testing.assert_array_equal(out_l[flat], out_i[flat])
    # the boundary sits in the same place: nearest labels switch where the ramp crosses 1.5
    np.testing.assert_array_equal(out_l[~flat] == 3, out_i[~flat] > 1.5)


def test_random_augmentations_aligned_and_seeded():
    image, labels = _pair((6, 12, 12))
    augs = [RandomCrop((4, 8, 8)), RandomFlip((0, 1, 2)), RandomRotate90XY()]
    for seed in range(20):
        a = AugInput(image, labels)
        apply_augmentations(augs, a, np.random.default_rng(seed))
        assert a.labels.shape == (4, 8, 8)
        np.testing.assert_array_equal(a.image[0], a.labels)
        b = AugInput(image, labels)
        apply_augmentations(augs, b, np.random.default_rng(seed))
        np.testing.assert_array_equal(a.labels, b.labels)


def test_crop_pads_small_volumes_and_rot90_keeps_rectangles():
    image, labels = _pair((3, 6, 10))
    a = AugInput(image, labels)
    RandomCrop((5, 8, 8))(a, np.random.default_rng(0))
    assert a.labels.shape == (5, 8, 8)
    np.testing.assert_array_equal(a.image[0], a.labels)
    assert (a.labels != 0).sum() <= (labels != 0).sum()
    for seed in range(8):  # H != W: only 0 or 180 degrees, the shape is kept
        b = AugInput(image, labels)
        RandomRotate90XY()(b, np.random.default_rng(seed))
        assert b.labels.shape == labels.shape


def test_intensity():
    image, labels = _pair()
    t = IntensityTransform(scale=2.0, shift=0.5, gamma=1.0)
    np.testing.assert_allclose(t.apply_image(image), image * 2 + 0.5)
    assert t.apply_labels(labels) is labels
    t = RandomIntensity((0.9, 1.1), (-0.1, 0.1), (0.8, 1.25), 0.02).get_transform(
        AugInput(image), np.random.default_rng(0)
    )
    t2 = RandomIntensity((0.9, 1.1), (-0.1, 0.1), (0.8, 1.25), 0.02).get_transform(
        AugInput(image), np.random.default_rng(0)
    )
    np.testing.assert_array_equal(t.apply_image(image), t2.apply_image(image))


def _cube(shape=(20, 20, 20), lo=5, side=10):
    labels = np.zeros(shape, np.int32)
    labels[lo : lo + side, lo : lo + side, lo : lo + side] = 1
    return labels[None].astype(np.float32), labels


def test_random_scale_zooms_every_axis_by_one_factor():
    image, labels = _cube()
    a = AugInput(image, labels)
    t = RandomScale((1.5, 1.5), prob=1.0)(a, np.random.default_rng(0))
    assert isinstance(t, ResampleTransform) and a.labels.shape == (30, 30, 30)
    # nearest labels on the exact factor 30/20: the cube [5, 15) lands on [7.5, 22.5) -> 15 voxels
    nz = np.nonzero(a.labels)
    assert [int(i.max() - i.min() + 1) for i in nz] == [15, 15, 15]
    assert int(a.labels.sum()) == 15**3
    flat = (a.image[0] == 0) | (a.image[0] == 1)  # linear image: agrees where it is flat
    np.testing.assert_array_equal(a.image[0][flat], a.labels[flat])


def test_random_scale_draws_log_uniformly_and_keeps_the_stream():
    image, labels = _cube()
    factors = []
    for seed in range(200):
        a = AugInput(image, labels)
        RandomScale((0.8, 1.25), prob=1.0)(a, np.random.default_rng(seed))
        factors.append(a.labels.shape[0] / 20)
        assert len(set(a.labels.shape)) == 1  # one factor for every axis
    factors = np.array(factors)
    assert factors.min() >= 0.8 and factors.max() <= 1.25
    assert 0.4 < np.mean(factors > 1.0) < 0.6  # log-uniform: as many zooms in as out
    # prob 0 leaves the input as it was and draws as many numbers as prob 1
    a = AugInput(image, labels)
    rng = np.random.default_rng(3)
    RandomScale((0.8, 1.25), prob=0.0)(a, rng)
    assert a.labels is labels
    rng1 = np.random.default_rng(3)
    RandomScale((0.8, 1.25), prob=1.0)(AugInput(image, labels), rng1)
    assert rng.random() == rng1.random()
    # prob 0.5: about half of the inputs are zoomed
    zoomed = 0
    for seed in range(200):
        a = AugInput(image, labels)
        RandomScale((0.8, 1.25), prob=0.5)(a, np.random.default_rng(seed))
        zoomed += a.labels is not labels
    assert 70 < zoomed < 130


@pytest.mark.parametrize(
    "scale_range, prob, match",
    [
        ([1.25, 0.8], 1.0, "RANGE"),
        ([0.0, 1.25], 1.0, "RANGE"),
        ([0.8], 1.0, "RANGE"),
        ([0.8, 1.25], 1.5, "PROB"),
        ([0.8, 1.25], -0.1, "PROB"),
    ],
)
def test_scale_range_errors_name_the_key(scale_range, prob, match):
    with pytest.raises(ValueError, match=match):
        check_scale_range(scale_range, prob, names=("RANGE", "PROB"))
    check_scale_range([], 0.5)  # empty: off
