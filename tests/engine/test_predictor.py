import json
import os

import numpy as np
import pytest
import torch

from det3d.config import get_cfg
from det3d.data import DatasetMapper3D, make_synthetic_volume, read_labels, write_volume
from det3d.engine import predictor
from det3d.engine.predict_cli import main
from det3d.engine.tiling import TileGrid
from det3d.modeling import build_model

from _predict_test_utils import object_volume, same_partition, stub_command_files

QUICK = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "quick_schedules",
    "mask_rcnn_R18_FPN_3d_instant_test.yaml",
)
SPACING = (1.0, 0.5, 0.5)


def _random_model_files(tmp_path, shape, **overrides):
    """A randomly initialised tiny Mask R-CNN that pastes every detection (thresholds 0), its
    weights and config, and a synthetic volume of ``shape``; returns (cfg, yaml, volume)."""
    cfg = get_cfg()
    cfg.merge_from_file(QUICK)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_HEADS.LABELS_SCORE_THRESH_TEST = 0.0
    cfg.TEST.TILE.CUT_OBJECTS = "keep"  # a random model's masks are anything
    for k, v in overrides.items():
        cfg.merge_from_list([k, v])
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, str(tmp_path / "w.pth"))
    cfg.MODEL.WEIGHTS = str(tmp_path / "w.pth")
    (tmp_path / "cfg.yaml").write_text(cfg.dump())
    image, _, _ = make_synthetic_volume(
        shape, num_objects=4, spacing=SPACING, size_range=(2.5, 4.0), seed=5
    )
    write_volume(str(tmp_path / "vol.tif"), (image * 1000).astype(np.uint16), spacing=SPACING)
    return cfg, str(tmp_path / "cfg.yaml"), str(tmp_path / "vol.tif")


@pytest.mark.parametrize(
    "target_spacing, head",
    [("[]", ""), ("[1.0, 1.0, 1.0]", ""), ("[1.0, 1.0, 1.0]", "FPNForegroundCenterHead")],
)
def test_volume_that_fits_one_tile_gives_the_untiled_result(tmp_path, target_spacing, head):
    # with a centre-map head, instances split after pasting are new rows the tile keeps as well
    keys = {"INPUT.TARGET_SPACING": target_spacing, "MODEL.FOREGROUND_HEAD.NAME": head}
    if head:  # a random head's foreground is about 0.5: count all of it
        keys["MODEL.FOREGROUND_HEAD.THRESHOLD"] = 0.0
    cfg, cfg_file, vol = _random_model_files(tmp_path, (32, 48, 64), **keys)
    argv = ["--config-file", cfg_file, "--input", vol, "--output", str(tmp_path / "out")]
    assert main(argv + ["TEST.TILE.SIZE", "[32, 64, 64]"]) == 0
    tiled = read_labels(str(tmp_path / "out" / "vol_labels.tif"))
    # untiled: the dataset mapper's input through the model, as evaluation runs it
    model = predictor.build_predict_model(cfg)
    record = {"file_name": vol, "image_id": 0, "depth": 32, "height": 48, "width": 64,
              "spacing": SPACING}
    with torch.no_grad():
        out = model([DatasetMapper3D(cfg, is_train=False)(record)])[0]
        if head:  # the random centre map does split some instances
            model.foreground_head.center_split = None
            plain = model([DatasetMapper3D(cfg, is_train=False)(record)])[0]
            assert len(out["instances"]) > len(plain["instances"])
    untiled = out["instance_labels"].numpy()
    assert len(np.unique(untiled)) > 5  # the comparison is not between empty volumes
    assert same_partition(tiled, untiled)


class _Crash(Exception):
    pass


def test_resumed_run_gives_the_same_output(tmp_path, monkeypatch, capsys):
    raw, _ = object_volume(shape=(24, 64, 80), num_objects=16, seed=4)
    cfg, _, vol = stub_command_files(tmp_path, raw, SPACING)
    assert main(["--config-file", cfg, "--input", vol, "--output", str(tmp_path / "a")]) == 0
    run = predictor.TileRunner.run
    calls = []

    def crashing_run(self, job, tiles):
        calls.append(1)
        if len(calls) == 5:
            raise _Crash()
        return run(self, job, tiles)

    monkeypatch.setattr(predictor.TileRunner, "run", crashing_run)
    out = tmp_path / "b"
    with pytest.raises(_Crash):
        main(["--config-file", cfg, "--input", vol, "--output", str(out)])
    monkeypatch.setattr(predictor.TileRunner, "run", run)
    assert not os.path.exists(out / "vol_labels.tif")  # nothing presented as complete
    work = out / ".det3d-predict" / "vol"
    state = json.loads((work / "progress.json").read_text())
    assert 0 < state["tiles_done"] < state["tiles"] and not state["complete"]
    # the tile being painted when the run died left ids beyond the committed ones in free voxels
    store = predictor.open_label_store(str(work / "labels.zarr"))
    tile = TileGrid((24, 64, 80), (16, 32, 32), (12, 16, 16))[state["tiles_done"]]
    region = store[tile.slices]
    region[region == 0] = state["next_id"] + 3
    store[tile.slices] = region
    capsys.readouterr()
    assert main(["--config-file", cfg, "--input", vol, "--output", str(out)]) == 0
    assert f"continued at tile {state['tiles_done']}" in capsys.readouterr().out
    for name in ("vol_labels.tif", "vol_objects.csv"):
        assert (out / name).read_bytes() == (tmp_path / "a" / name).read_bytes()


def test_dask_local_cluster_gives_the_serial_labels(tmp_path):
    pytest.importorskip("distributed")
    _, cfg_file, vol = _random_model_files(tmp_path, (32, 48, 128))
    argv = ["--config-file", cfg_file, "--input", vol]
    opts = ["TEST.TILE.SIZE", "[32, 64, 64]", "TEST.TILE.OVERLAP", "[8, 16, 16]"]
    assert main(argv + ["--output", str(tmp_path / "serial")] + opts) == 0
    assert main(argv + ["--output", str(tmp_path / "dask"), "--workers", "2"] + opts) == 0
    serial = read_labels(str(tmp_path / "serial" / "vol_labels.tif"))
    assert len(np.unique(serial)) > 5
    assert np.array_equal(read_labels(str(tmp_path / "dask" / "vol_labels.tif")), serial)
    table = "vol_objects.csv"
    assert (tmp_path / "dask" / table).read_bytes() == (tmp_path / "serial" / table).read_bytes()
