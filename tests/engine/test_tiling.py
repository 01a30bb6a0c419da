import numpy as np
import pytest
import torch

from det3d.data.volume_source import VolumeSource
from det3d.engine.predictor import SerialExecutor, TileJob, TileRunner
from det3d.engine.tiling import (
    CutObjectError,
    TileGrid,
    TileResult,
    TileStitcher,
    axis_tiles,
    select_owned,
    tolerance_for,
)
from det3d.evaluation import seg_score
from det3d.structures import Instances

from _predict_test_utils import ThresholdModel, object_volume, same_partition


@pytest.mark.parametrize(
    "length,size,overlap", [(10, 16, 4), (16, 16, 4), (17, 16, 4), (100, 32, 8), (257, 64, 16)]
)
def test_axis_tiles_cover_overlap_and_partition(length, size, overlap):
    tiles = axis_tiles(length, size, overlap)
    if length <= size:
        assert tiles == [(0, length, 0, length)]
        return
    assert tiles[0][0] == 0 and tiles[-1][1] == length
    assert all(stop - start == size for start, stop, _, _ in tiles)
    for (s0, e0, _, c1), (s1, e1, c2, _) in zip(tiles, tiles[1:]):
        assert e0 - s1 >= overlap  # neighbours overlap by at least the overlap asked for
        assert c1 == c2  # cores meet
        assert c1 - s1 >= overlap // 2 and e0 - c1 >= overlap // 2  # the margin around a core
    # cores partition the axis
    covered = np.zeros(length, int)
    for _, _, c0, c1 in tiles:
        covered[c0:c1] += 1
    assert (covered == 1).all()


def test_grid_orders_tiles_and_marks_interior_faces():
    grid = TileGrid((10, 40, 50), (16, 32, 32), (4, 8, 8))
    assert grid.counts == (1, 2, 2) and len(grid) == 4
    t = grid[1]  # y tile 0, x tile 1
    assert t.start == (0, 0, 18) and t.stop == (10, 32, 50)
    assert t.interior_lo == (False, False, True) and t.interior_hi == (False, True, False)
    with pytest.raises(ValueError, match="overlap 32 must be >= 0 and smaller than the tile size"):
        TileGrid((10, 40, 50), (16, 32, 32), (4, 32, 8))


def _stitch(model, raw, size, overlap, batch=1, cut="error"):
    """Tiles ``raw`` (1, D, H, W) through ``model``; the stitched labels."""
    source = VolumeSource.__new__(VolumeSource)  # an in-memory source
    source.path, source.axes, source.shape, source.dtype = "mem", None, raw.shape, raw.dtype
    source._lazy = raw
    grid = TileGrid(raw.shape[1:], size, overlap)
    job = TileJob(source, [], None, tolerance_for(overlap), cut)
    out = np.zeros(raw.shape[1:], np.int32)
    stitcher = TileStitcher(out)
    batches = [grid.tiles[i : i + batch] for i in range(0, len(grid), batch)]
    for tiles, results in zip(batches, SerialExecutor(TileRunner(model)).map(job, batches)):
        for tile, result in zip(tiles, results):
            stitcher.paint(tile, result)
    return out, grid


def _objects_crossing_cores(gt, grid):
    crossing = set()
    for t in grid:
        for axis in range(3):
            for b in (t.core_start[axis], t.core_stop[axis]):
                if 0 < b < gt.shape[axis]:
                    lo = np.take(gt, b - 1, axis=axis)
                    hi = np.take(gt, b, axis=axis)
                    crossing |= set(np.intersect1d(lo[lo > 0], hi[hi > 0]).tolist())
    return crossing


@pytest.mark.parametrize("batch", [1, 3])
def test_objects_across_tile_borders_come_out_whole_and_once(batch):
    raw, gt = object_volume()
    tiled, grid = _stitch(ThresholdModel(), raw, (16, 32, 32), (12, 16, 16), batch)
    assert len(grid) > 4
    assert len(_objects_crossing_cores(gt, grid)) >= 5  # the test puts objects across borders
    assert len(np.unique(tiled)) == len(np.unique(gt))
    assert same_partition(tiled, gt)  # every object whole, none split, none twice


def test_seg_of_tiled_equals_untiled():
    raw, gt = object_volume(seed=1)
    tiled, _ = _stitch(ThresholdModel(), raw, (16, 32, 32), (12, 16, 16))
    untiled, grid = _stitch(ThresholdModel(), raw, raw.shape[1:], (0, 0, 0))
    assert len(grid) == 1
    assert abs(seg_score(gt, tiled) - seg_score(gt, untiled)) <= 0.01
    assert seg_score(gt, tiled) == pytest.approx(1.0)


def test_object_larger_than_the_overlap_is_refused_naming_the_keys():
    raw, gt = object_volume(shape=(16, 64, 64), num_objects=3, size_range=(7.0, 8.0), seed=2)
    with pytest.raises(CutObjectError, match="TEST.TILE.OVERLAP.*TEST.TILE.CUT_OBJECTS"):
        _stitch(ThresholdModel(), raw, (16, 24, 24), (0, 4, 4))
    kept, _ = _stitch(ThresholdModel(), raw, (16, 24, 24), (0, 4, 4), cut="keep")
    assert (kept > 0).sum() > 0


def _output(labels: np.ndarray, scores):
    inst = Instances(labels.shape)
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.arange(len(scores))
    return {"instances": inst, "instance_labels": torch.from_numpy(labels.astype(np.int32))}


def test_select_owned_keeps_core_centroids_with_their_rows():
    grid = TileGrid((1, 1, 20), (1, 1, 12), (0, 0, 4))  # x tiles [0, 12) and [8, 20), cores at 10
    labels = np.zeros((1, 1, 12), np.int32)
    labels[0, 0, 1:3] = 1  # centroid 1.5: core of tile 0
    labels[0, 0, 9:12] = 3  # centroid 10 (tile 0 coordinates): beyond the core + tolerance 0.5
    result = select_owned(_output(labels, [0.9, 0.8, 0.7]), grid[0], (0, 0, 0.5), "keep")
    assert result.scores == [pytest.approx(0.9)] and result.classes == [0]
    assert np.array_equal(result.labels, np.where(labels == 1, 1, 0))
    # in tile 1 the same object (voxels 9..11 of the volume) is in the core
    labels1 = np.zeros((1, 1, 12), np.int32)
    labels1[0, 0, 1:4] = 2
    result1 = select_owned(_output(labels1, [0.5, 0.6]), grid[1], (0, 0, 0.5), "keep")
    assert result1.scores == [pytest.approx(0.6)] and result1.classes == [1]


def test_stitcher_paints_a_duplicate_once_and_clears_interrupted_ids():
    grid = TileGrid((1, 1, 20), (1, 1, 12), (0, 0, 4))
    out = np.zeros((1, 1, 20), np.int32)
    a = np.zeros((1, 1, 12), np.int32)
    a[0, 0, 8:11] = 1  # volume voxels 8..10, seen by both tiles
    b = np.zeros((1, 1, 12), np.int32)
    b[0, 0, 0:4] = 1  # volume voxels 8..11: the same object, one voxel larger
    stitcher = TileStitcher(out)
    rec_a = stitcher.paint(grid[0], TileResult(0, a, [0.9], [0]))
    rec_b = stitcher.paint(grid[1], TileResult(1, b, [0.9], [0]))
    assert len(rec_a) == 1 and rec_b == []  # 3 of 4 voxels already claimed: a duplicate
    assert rec_a[0].bbox == (0, 0, 8, 1, 1, 11) and rec_a[0].voxels == 3
    assert out.tolist() == [[[0] * 8 + [1] * 3 + [0] * 9]]
    # an interrupted attempt at tile 1 left id 7 behind: a resumed stitcher clears it
    out[0, 0, 15] = 7
    resumed = TileStitcher(out, next_id=2)
    resumed.paint(grid[1], TileResult(1, np.zeros((1, 1, 12), np.int32), [], []))
    assert out[0, 0, 15] == 0 and out[0, 0, 9] == 1
