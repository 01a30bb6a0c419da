import pytest

from det3d.utils.axes import check_spatial_axes


def test_check_spatial_axes_keeps_distinct_axes_and_names_the_key():
    assert check_spatial_axes([2, 0], 3, "KEY") == (2, 0)
    assert check_spatial_axes([], 2, "KEY") == ()
    for bad in ([0, 0], [3], [-1], [True], [0.0]):
        with pytest.raises(ValueError, match=r"KEY must list distinct spatial axes in 0\.\.2"):
            check_spatial_axes(bad, 3, "KEY")
