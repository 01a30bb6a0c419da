"""The watershed baseline's pure helpers (bench/peers/watershed_run.py), without scikit-image."""

import importlib.util
import itertools
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(scope="module")
def ws():
    sys_path, had_volumes = list(sys.path), "volumes" in sys.modules
    path = os.path.join(ROOT, "bench", "peers", "watershed_run.py")
    spec = importlib.util.spec_from_file_location("peers_watershed_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # scikit-image is imported only inside segment()
    yield module
    sys.path[:] = sys_path
    if not had_volumes:
        sys.modules.pop("volumes", None)


def test_sigma_voxels_per_axis(ws):
    assert ws.sigma_voxels(1.0, (1.0, 0.5, 0.25)) == (1.0, 2.0, 4.0)


@pytest.mark.parametrize(
    "radius,spacing", [(2.0, (1.0, 0.5, 0.5)), (1.5, (1.0, 1.0, 1.0)), (0.4, (1.0, 0.5, 0.5))]
)
def test_ellipsoid_footprint_matches_brute_force(ws, radius, spacing):
    fp = ws.ellipsoid_footprint(radius, spacing)
    half = [int(np.floor(radius / s)) for s in spacing]
    assert fp.shape == tuple(2 * h + 1 for h in half)
    for idx in itertools.product(*[range(n) for n in fp.shape]):
        d2 = sum(((i - h) * s) ** 2 for i, h, s in zip(idx, half, spacing))
        assert fp[idx] == (d2 <= radius**2), idx
    assert fp[tuple(half)]  # the centre is always in


def test_seed_markers_join_touching_peaks_and_seed_unseeded_components(ws):
    components = np.zeros((3, 12, 12), np.int32)
    components[:, 0:5, 0:12] = 1
    components[:, 8:12, 2:6] = 2
    distance = np.zeros(components.shape, np.float64)
    distance[1, 10, 3] = 5.0  # component 2's deepest voxel
    distance[1, 9, 4] = 2.0
    peaks = np.array([[1, 2, 2], [1, 2, 3], [1, 2, 9]])  # two touching, one apart; all in comp. 1
    markers, n = ws.seed_markers(peaks, components, distance)
    assert n == 3
    assert markers[1, 2, 2] == markers[1, 2, 3] != 0
    assert markers[1, 2, 9] not in (0, markers[1, 2, 2])
    assert markers[1, 10, 3] != 0 and markers[1, 9, 4] == 0
    assert np.count_nonzero(markers) == 4


def test_seed_markers_without_foreground(ws):
    markers, n = ws.seed_markers(
        np.zeros((0, 3), int), np.zeros((2, 4, 4), np.int32), np.zeros((2, 4, 4))
    )
    assert n == 0 and not markers.any()
