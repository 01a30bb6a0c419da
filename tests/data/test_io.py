import numpy as np
import pytest
import tifffile

from det3d.data.io import read_labels, read_spacing, read_volume, volume_shape, write_volume


def _vol(shape, dtype=np.uint16, seed=0):
    return np.random.default_rng(seed).integers(0, 1000, shape).astype(dtype)


def test_zyx_plain(tmp_path):
    a = _vol((3, 4, 5))
    p = str(tmp_path / "a.tif")
    tifffile.imwrite(p, a)  # no axes metadata: 3 dims mean ZYX
    v = read_volume(p)
    assert v.shape == (1, 3, 4, 5) and v.dtype == np.uint16
    np.testing.assert_array_equal(v[0], a)
    assert isinstance(v, np.memmap)  # uncompressed: memory-mapped
    assert volume_shape(p) == (1, 3, 4, 5)


def test_czyx_plain_and_axes_override(tmp_path):
    a = _vol((2, 3, 4, 5))
    p = str(tmp_path / "a.tif")
    tifffile.imwrite(p, a)
    np.testing.assert_array_equal(read_volume(p), a)
    # the same bytes read as ZCYX
    v = read_volume(p, axes="ZCYX")
    np.testing.assert_array_equal(v, a.transpose(1, 0, 2, 3))


def test_yx_is_one_slice(tmp_path):
    a = _vol((4, 5))
    p = str(tmp_path / "a.tif")
    tifffile.imwrite(p, a)
    v = read_volume(p)
    assert v.shape == (1, 1, 4, 5)
    np.testing.assert_array_equal(v[0, 0], a)


def test_imagej_hyperstack(tmp_path):
    a = _vol((2, 3, 4, 5))  # C, Z, Y, X
    p = str(tmp_path / "ij.tif")
    tifffile.imwrite(
        p,
        a.transpose(1, 0, 2, 3).copy(),
        imagej=True,
        metadata={"axes": "ZCYX", "spacing": 2.0, "unit": "micron"},
        resolution=(1 / 0.25, 1 / 0.5),
    )
    np.testing.assert_array_equal(read_volume(p), a)
    assert read_spacing(p) == pytest.approx((2.0, 0.5, 0.25))
    # TZCYX with a single time point
    p2 = str(tmp_path / "ij_t.tif")
    tifffile.imwrite(
        p2, a.transpose(1, 0, 2, 3)[None].copy(), imagej=True, metadata={"axes": "TZCYX"}
    )
    np.testing.assert_array_equal(read_volume(p2), a)


def test_several_time_points_error(tmp_path):
    p = str(tmp_path / "t.tif")
    tifffile.imwrite(p, _vol((2, 3, 4, 5)), imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(ValueError, match="t.tif"):
        read_volume(p)


def test_compressed_not_memmapped(tmp_path):
    a = _vol((3, 4, 5))
    p = str(tmp_path / "c.tif")
    tifffile.imwrite(p, a, compression="zlib")
    v = read_volume(p)
    assert not isinstance(v, np.memmap)
    np.testing.assert_array_equal(v[0], a)


def test_zarr(tmp_path):
    zarr = pytest.importorskip("zarr")
    a = _vol((3, 4, 5))
    z = zarr.open_array(
        str(tmp_path / "a.zarr"), mode="w", shape=a.shape, dtype=a.dtype, chunks=(1, 4, 5)
    )
    z[:] = a
    v = read_volume(str(tmp_path / "a.zarr"))
    assert v.shape == (1, 3, 4, 5)
    np.testing.assert_array_equal(np.asarray(v), a[None])
    np.testing.assert_array_equal(v[0, 1:3, :, 2], a[1:3, :, 2])
    # group with a component, OME-style axes
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    arr = g.create_array("raw", shape=(3, 2, 4, 5), dtype="uint16")
    arr[:] = a[:, None].repeat(2, 1)
    g.attrs["multiscales"] = [{"axes": [{"name": n} for n in "zcyx"]}]
    v = read_volume(str(tmp_path / "g.zarr/raw"))
    assert v.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(np.asarray(v)[1], a)
    assert read_volume(str(tmp_path / "g.zarr"), component="raw").shape == (2, 3, 4, 5)


def test_write_roundtrip_and_spacing(tmp_path):
    img = _vol((2, 3, 4, 5)).astype(np.float32)
    p = str(tmp_path / "img.tif")
    write_volume(p, img, spacing=(2.0, 0.5, 0.25))
    np.testing.assert_array_equal(read_volume(p), img)
    assert read_spacing(p) == pytest.approx((2.0, 0.5, 0.25))
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind
    for hi in (7, 300, 70000):
        lab = np.random.default_rng(hi).integers(0, hi, (3, 4, 5)).astype(np.int32)
        q = str(tmp_path / f"lab{hi}.tif")
        write_volume(q, lab, spacing=(1.0, 2.0, 3.0))
        out = read_labels(q)
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, lab)
        assert read_spacing(q) == pytest.approx((1.0, 2.0, 3.0))


def test_uncalibrated_spacing_is_none(tmp_path):
    p = str(tmp_path / "a.tif")
    write_volume(p, _vol((3, 4, 5)))
    assert read_spacing(p) is None


def test_read_labels_errors(tmp_path):
    p = str(tmp_path / "float_labels.tif")
    tifffile.imwrite(p, np.full((2, 3, 3), 1.5, np.float32), photometric="minisblack")
    with pytest.raises(ValueError, match="float_labels.tif"):
        read_labels(p)
    p = str(tmp_path / "int_float.tif")
    tifffile.imwrite(p, np.full((2, 3, 3), 2.0, np.float32), photometric="minisblack")
    assert read_labels(p).dtype == np.int32
    p = str(tmp_path / "neg.tif")
    tifffile.imwrite(p, np.full((2, 3, 3), -1, np.int16), photometric="minisblack")
    with pytest.raises(ValueError, match="neg.tif"):
        read_labels(p)
    p = str(tmp_path / "bool.tif")
    tifffile.imwrite(p, np.ones((2, 3, 3), bool))
    assert read_labels(p).max() == 1
    p = str(tmp_path / "two_channels.tif")
    tifffile.imwrite(p, np.ones((2, 2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="two_channels.tif"):
        read_labels(p)


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        read_volume(str(tmp_path / "nope.tif"))
    p = tmp_path / "junk.tif"
    p.write_bytes(b"not a tiff at all")
    with pytest.raises(OSError, match="junk.tif"):
        read_volume(str(p))
    with pytest.raises(FileNotFoundError, match="missing.zarr"):
        read_volume(str(tmp_path / "missing.zarr"))


def _truncate(path, fraction=0.5):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * fraction)])


def test_truncated_tiff_names_the_file(tmp_path):
    # a plain tifffile TIFF (float64 is no ImageJ dtype): memmap fails, reading fails
    path = str(tmp_path / "cut.tif")
    tifffile.imwrite(path, np.random.rand(8, 64, 64), metadata={"axes": "ZYX"})
    _truncate(path)
    with pytest.raises(OSError, match=r"cut\.tif: cannot read as TIFF.*failed to read"):
        np.asarray(read_volume(path))


def test_truncated_imagej_hyperstack_is_not_read_as_one_slice(tmp_path):
    path = str(tmp_path / "cut_ij.tif")
    write_volume(path, np.random.rand(8, 64, 64).astype(np.float32))
    _truncate(path)
    for read in (read_volume, volume_shape, read_labels):
        with pytest.raises(OSError, match=r"cut_ij\.tif: truncated or corrupt TIFF.*8 images"):
            read(path)


def test_zero_size_axis_refused_when_read(tmp_path):
    path = str(tmp_path / "empty.tif")
    with pytest.warns(UserWarning):  # tifffile: "writing zero-size array to nonconformant TIFF"
        tifffile.imwrite(path, np.zeros((0, 5, 5), np.uint8))
    for read in (read_volume, volume_shape, read_labels):
        with pytest.raises(ValueError, match=r"empty\.tif: the volume has a zero-size axis"):
            read(path)
    zarr = pytest.importorskip("zarr")
    store = str(tmp_path / "empty.zarr")
    zarr.open(store, mode="w", shape=(4, 0, 6), dtype="uint8")
    with pytest.raises(ValueError, match=r"empty\.zarr: the volume has a zero-size axis"):
        read_volume(store)
