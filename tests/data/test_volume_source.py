import pickle

import numpy as np
import pytest
import tifffile

from det3d.data import volume_source
from det3d.data.dataset_mapper import apply_intensity_bounds, normalize_percentiles
from det3d.data.io import LazyVolume
from det3d.data.volume_source import ForegroundMask, VolumeSource, intensity_bounds


@pytest.fixture
def volume():
    return np.random.default_rng(0).integers(0, 4000, (1, 8, 20, 24)).astype(np.uint16)


def _write_all(tmp_path, vol):
    import zarr

    tifffile.imwrite(str(tmp_path / "plain.tif"), vol[0])
    tifffile.imwrite(str(tmp_path / "zlib.tif"), vol[0], compression="zlib")
    z = zarr.create_array(store=str(tmp_path / "v.zarr"), shape=vol.shape[1:], dtype=vol.dtype,
                          chunks=(4, 8, 8))
    z[:] = vol[0]
    return [str(tmp_path / n) for n in ("plain.tif", "zlib.tif", "v.zarr")]


def test_reads_regions_of_every_kind_of_file(tmp_path, volume):
    region = (slice(2, 7), slice(3, 17), slice(5, 24))
    for path in _write_all(tmp_path, volume):
        source = VolumeSource(path)
        assert source.shape == volume.shape and source.dtype == np.uint16
        assert np.array_equal(source.read(region), volume[(slice(None),) + region])
        again = pickle.loads(pickle.dumps(source))  # as a Dask worker gets it
        assert np.array_equal(again.read(region), volume[(slice(None),) + region])
    # a compressed TIFF is read page by page, not decoded whole
    assert isinstance(VolumeSource(str(tmp_path / "zlib.tif"))._lazy, LazyVolume)


def test_bounds_of_a_small_volume_are_the_mappers(volume):
    image = volume.astype(np.float32) * 0.37
    source = VolumeSource.__new__(VolumeSource)
    source.path, source.shape, source.dtype, source._lazy = "mem", image.shape, image.dtype, image
    bounds = intensity_bounds(source, (1.0, 99.8))
    mine = apply_intensity_bounds(image.copy(), bounds)
    assert np.array_equal(mine, normalize_percentiles(image, (1.0, 99.8)))  # bit for bit
    assert intensity_bounds(source, []) == []


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_histogram_bounds_of_a_large_integer_volume_are_exact(monkeypatch, dtype):
    monkeypatch.setattr(volume_source, "EXACT_PERCENTILE_VOXELS", 100)
    monkeypatch.setattr(volume_source, "_SLAB_VOXELS", 300)
    info = np.iinfo(dtype)
    image = np.random.default_rng(1).integers(info.min, info.max, (2, 9, 10, 11)).astype(dtype)
    source = VolumeSource.__new__(VolumeSource)
    source.path, source.shape, source.dtype, source._lazy = "mem", image.shape, image.dtype, image
    bounds = intensity_bounds(source, (1.0, 99.8))
    for c in range(2):
        expected = np.percentile(image[c].astype(np.float32), [1.0, 99.8])
        assert np.allclose(bounds[c], expected, rtol=0, atol=1e-6 * (info.max - info.min))


def test_sampled_bounds_of_a_large_float_volume(monkeypatch):
    monkeypatch.setattr(volume_source, "EXACT_PERCENTILE_VOXELS", 2000)
    image = np.random.default_rng(2).normal(size=(1, 40, 30, 30)).astype(np.float32)
    source = VolumeSource.__new__(VolumeSource)
    source.path, source.shape, source.dtype, source._lazy = "mem", image.shape, image.dtype, image
    (lo, hi), = intensity_bounds(source, (1.0, 99.0))
    # 36000 voxels, at most 2000 sampled: every 18th z-slice from the 9th
    assert (lo, hi) == tuple(np.percentile(image[0, 9::18], [1.0, 99.0]))
    image[0, 27, 3, 3] = np.nan  # a sampled slice
    with pytest.raises(ValueError, match="mem: NaN/Inf voxels in z-slice 27"):
        intensity_bounds(source, (1.0, 99.0))


def test_foreground_mask_of_another_resolution(tmp_path):
    mask = np.zeros((2, 4, 4), np.uint8)
    mask[1, 3, 0] = 1  # covers z 4..7, y 12..15, x 0..3 of a (8, 16, 16) volume
    tifffile.imwrite(str(tmp_path / "m.tif"), mask)
    fg = ForegroundMask(str(tmp_path / "m.tif"), (8, 16, 16))
    assert fg.region_has_foreground((4, 12, 0), (8, 16, 4))
    assert fg.region_has_foreground((3, 11, 3), (5, 13, 5))
    assert not fg.region_has_foreground((0, 0, 0), (4, 16, 16))
    assert not fg.region_has_foreground((0, 0, 4), (8, 16, 16))
