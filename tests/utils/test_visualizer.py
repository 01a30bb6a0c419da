import numpy as np
import pytest

from det3d.utils.visualizer import label_outlines, to_uint8, volume_montage, write_png


def _slow_outlines(labels):
    h, w = labels.shape
    out = np.zeros_like(labels, dtype=bool)
    for y in range(h):
        for x in range(w):
            if labels[y, x] == 0:
                continue
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and labels[yy, xx] != labels[y, x]:
                    out[y, x] = True
    return out


def test_outlines_match_slow_reference():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(12, 15))
    np.testing.assert_array_equal(label_outlines(labels), _slow_outlines(labels))


def test_to_uint8_range_and_nan():
    img = np.array([[np.nan, 0.0], [1.0, 2.0]], np.float32)
    out = to_uint8(img, percentiles=(0, 100))
    assert out.dtype == np.uint8 and out.max() == 255 and out[0, 0] == 0


def test_montage_shape_and_outline_pixels(tmp_path):
    image = np.zeros((6, 10, 12), np.float32)
    labels = np.zeros((6, 10, 12), np.int32)
    labels[2:5, 3:7, 4:9] = 1
    image[labels > 0] = 1.0
    pic = volume_montage(image, labels, num_slices=3, columns=3, scale=1)
    assert pic.shape == (10, 36, 3)
    # the middle tile is z=2: its object border is coloured (channels differ), its inside grey
    mid = pic[:, 12:24]
    assert len(set(mid[3, 4].tolist())) > 1
    assert len(set(mid[4, 5].tolist())) == 1
    write_png(str(tmp_path / "m.png"), pic)
    assert (tmp_path / "m.png").stat().st_size > 0
    with pytest.raises(ValueError, match="shape"):
        volume_montage(image, labels[:, :5])
