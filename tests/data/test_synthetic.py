import numpy as np
import pytest

from det3d.data import make_synthetic_dataset, make_synthetic_volume, read_labels, read_volume
from det3d.data.synthetic import GENERATOR_VERSION

# (class, voxel count) of each instance of one fixed volume, per generator version. Cached builtin
# splits are reused while GENERATOR_VERSION is unchanged, so an edit that changes the output must
# bump the version and record the new fingerprint here.
_FINGERPRINTS = {3: [(1, 721), (2, 701), (0, 383), (2, 154), (0, 310)]}


def _touching_pairs(labels):
    n = 0
    for ax in range(labels.ndim):
        a = np.moveaxis(labels, ax, 0)
        x, y = a[1:], a[:-1]
        n += int(((x != y) & (x > 0) & (y > 0)).sum())
    return n


def test_deterministic_and_counts():
    kw = dict(shape=(16, 48, 48), num_objects=6, spacing=(2.0, 0.5, 0.5), size_range=(2.0, 4.0))
    im1, lab1, cls1 = make_synthetic_volume(seed=3, **kw)
    im2, lab2, cls2 = make_synthetic_volume(seed=3, **kw)
    np.testing.assert_array_equal(im1, im2)
    np.testing.assert_array_equal(lab1, lab2)
    assert cls1 == cls2
    im3, lab3, _ = make_synthetic_volume(seed=4, **kw)
    assert not np.array_equal(lab1, lab3)
    assert im1.shape == (1, 16, 48, 48) and im1.dtype == np.float32 and lab1.dtype == np.int32
    assert sorted(np.unique(lab1)[1:].tolist()) == list(range(1, 7))
    assert set(cls1) == set(range(1, 7)) and set(cls1.values()) <= {0, 1, 2}


def test_output_change_bumps_generator_version():
    _, lab, cls = make_synthetic_volume(
        shape=(16, 48, 48), num_objects=5, spacing=(1.0, 0.5, 0.5), size_range=(2.0, 3.5), seed=9
    )
    got = [(cls[i], int((lab == i).sum())) for i in sorted(cls)]
    want = _FINGERPRINTS.get(GENERATOR_VERSION)
    assert want is not None, f"record the fingerprint of GENERATOR_VERSION {GENERATOR_VERSION}"
    msg = (
        f"the generator's output changed ({got} != {want}) but GENERATOR_VERSION is still "
        f"{GENERATOR_VERSION}: bump it so cached synthetic splits regenerate"
    )
    assert [c for c, _ in got] == [c for c, _ in want], msg
    # 1% slack: a different BLAS may flip a boundary voxel; a change to a shape moves far more.
    for (_, n), (_, m) in zip(got, want):
        assert abs(n - m) <= max(1, 0.01 * m), msg


def test_touching_flag():
    kw = dict(shape=(16, 48, 48), num_objects=6, size_range=(3.0, 5.0), seed=0)
    _, sep, _ = make_synthetic_volume(touching=False, **kw)
    assert _touching_pairs(sep) == 0
    _, tch, _ = make_synthetic_volume(touching=True, **kw)
    assert _touching_pairs(tch) > 0
    assert len(np.unique(tch)) == 7


def test_anisotropy_flattens_objects():
    # spheres of radius 4 µm: 4 voxels in z at 1 µm, 1-2 voxels at 4 µm
    _, iso, _ = make_synthetic_volume((24, 24, 24), 1, ("ellipsoid",), (4.0, 4.0), seed=0)
    _, ani, _ = make_synthetic_volume(
        (12, 24, 24), 1, ("ellipsoid",), (4.0, 4.0), spacing=(4.0, 1.0, 1.0), seed=0
    )
    z_iso = np.flatnonzero(iso.any(axis=(1, 2))).size
    z_ani = np.flatnonzero(ani.any(axis=(1, 2))).size
    assert z_ani < z_iso / 2
    assert np.flatnonzero(ani.any(axis=(0, 1))).size == np.flatnonzero(iso.any(axis=(0, 1))).size


def test_uint16_and_too_many_objects():
    im, _, _ = make_synthetic_volume(
        (8, 16, 16), 1, size_range=(2, 3), dtype="uint16", noise="poisson"
    )
    assert im.dtype == np.uint16
    with pytest.raises(RuntimeError, match="placed only"):
        make_synthetic_volume((8, 16, 16), 50, size_range=(3, 4), max_tries=200)


def test_make_dataset(tmp_path):
    meta = make_synthetic_dataset(
        str(tmp_path),
        2,
        seed=1,
        shape=(8, 24, 24),
        num_objects=2,
        size_range=(2.0, 3.0),
        spacing=(1.0, 1.0, 1.0),
    )
    assert meta["thing_classes"] == ["ellipsoid", "cuboid", "blob"]
    assert read_volume(str(tmp_path / "images" / "vol_001.tif")).shape == (1, 8, 24, 24)
    assert read_labels(str(tmp_path / "labels" / "vol_001.tif")).max() == 2
    assert (tmp_path / "classes" / "vol_000.json").exists() and (tmp_path / "meta.json").exists()


def test_blob_lobes_fit_inside_their_bounding_region():
    # The blob's bound comes from a finite set of directions; no voxel of the blob may lie on the
    # border of the region it is rasterised in (which would cut a lobe off).
    from det3d.data.synthetic import _Object, _random_lumps, _random_rotation

    rng = np.random.default_rng(0)
    spacing = (1.0, 0.5, 0.5)
    for _ in range(40):
        radii = rng.uniform(2.0, 5.0, size=3)
        obj = _Object(
            "blob", np.array([20.0, 20.0, 20.0]), radii, _random_rotation(rng), _random_lumps(rng)
        )
        _, mask = obj.rasterize((40, 80, 80), spacing)
        assert mask.any()
        for axis in range(3):
            assert not np.take(mask, 0, axis=axis).any()
            assert not np.take(mask, -1, axis=axis).any()


def test_pyramid_shape_matches_its_definition():
    # An axis-aligned pyramid of half-sizes r: its cross-section shrinks linearly from a square of
    # side 2r at the base to a point at the apex, so its volume is (2r)^2 * 2r / 3.
    from det3d.data.synthetic import _Object

    r = 10.0
    obj = _Object("pyramid", np.array([16.0, 16.0, 16.0]), np.full(3, r), np.eye(3), None)
    region, mask = obj.rasterize((32, 32, 32), (1.0, 1.0, 1.0))
    # rotation = identity: object axis 2 is array axis 2 (x); cross-sections shrink along it
    areas = mask.sum(axis=(0, 1))
    nz = areas[areas > 0]
    assert np.all(np.diff(nz) <= 0) and nz[0] > 10 * nz[-1]
    assert abs(mask.sum() - (2 * r) ** 3 / 3) < 0.08 * (2 * r) ** 3 / 3
    for axis in range(3):  # the whole pyramid fits its bounding region
        assert not np.take(mask, 0, axis=axis).any() and not np.take(mask, -1, axis=axis).any()


def test_touching_fraction_controls_how_many_objects_touch():
    kw = dict(shape=(48, 48, 48), num_objects=10, size_range=(2.5, 5.0), seed=5)

    def touching_objects(lab):
        n = 0
        for i in range(1, lab.max() + 1):
            m = lab == i
            from scipy import ndimage

            n += bool((ndimage.binary_dilation(m) & (lab > 0) & ~m).any())
        return n

    counts = []
    for frac in (0.0, 0.3, 1.0):
        fracs = []
        for seed in range(4):
            _, lab, _ = make_synthetic_volume(touching=frac, **dict(kw, seed=seed))
            assert sorted(np.unique(lab)[1:].tolist()) == list(range(1, 11))
            fracs.append(touching_objects(lab))
        counts.append(sum(fracs))
    assert counts[0] == 0  # apart: nothing touches, even with exact (not bounding-sphere) tests
    assert 0 < counts[1] < counts[2]
    with pytest.raises(ValueError, match="touching"):
        make_synthetic_volume((8, 16, 16), 1, touching=1.5)


def test_poisson_plus_gaussian_noise_adds_read_noise_to_shot_noise():
    kw = dict(
        shape=(8, 32, 32), num_objects=1, size_range=(2, 3), background=0.5, noise_level=0.05
    )
    bg = lambda im, lab: im[0][lab == 0]  # noqa: E731
    im_p, lab, _ = make_synthetic_volume(noise="poisson", **kw)
    im_pg, _, _ = make_synthetic_volume(noise="poisson+gaussian", **kw)
    var_p, var_pg = bg(im_p, lab).var(), bg(im_pg, lab).var()
    # shot noise variance = mean / photons = 0.5 * 0.05; read noise adds 0.05^2
    assert abs(var_p - 0.025) < 0.003
    assert abs(var_pg - (0.025 + 0.0025)) < 0.003
    with pytest.raises(ValueError, match="poisson\\+gaussian"):
        make_synthetic_volume(noise="speckle", **kw)
