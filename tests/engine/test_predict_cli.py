import os

import numpy as np
import pytest
import tifffile
import torch

from det3d.data import read_labels, read_spacing, read_volume
from det3d.engine import predict_cli
from det3d.engine.predict_cli import main

from _predict_test_utils import object_volume, read_table, same_partition, stub_command_files

SPACING = (1.0, 0.5, 0.5)


@pytest.fixture(scope="module")
def volume():
    return object_volume(shape=(24, 64, 80), num_objects=16, seed=3)


def _run(cfg, vol, out, *extra):
    return main(["--config-file", cfg, "--input", vol, "--output", str(out), *extra])


def test_tiff_labels_and_object_table_agree(tmp_path, volume):
    raw, gt = volume
    cfg, _, vol = stub_command_files(tmp_path, raw, SPACING)
    assert _run(cfg, vol, tmp_path / "out", "--montage") == 0
    labels = read_labels(str(tmp_path / "out" / "vol_labels.tif"))
    assert read_spacing(str(tmp_path / "out" / "vol_labels.tif")) == pytest.approx(SPACING)
    assert same_partition(labels, gt)
    assert os.path.getsize(tmp_path / "out" / "vol_outlines.png") > 0
    rows = read_table(str(tmp_path / "out" / "vol_objects.csv"))
    assert sorted(r["label"] for r in rows) == sorted(set(np.unique(labels).tolist()) - {0})
    for r in rows:  # against the label volume, object by object
        idx = np.nonzero(labels == int(r["label"]))
        assert r["volume_voxels"] == len(idx[0])
        assert r["volume_um3"] == pytest.approx(len(idx[0]) * 0.25, rel=1e-5)
        for a, n in enumerate("zyx"):
            assert r[f"bbox_{n}0"] == idx[a].min() and r[f"bbox_{n}1"] == idx[a].max() + 1
            assert r[f"centroid_{n}"] == pytest.approx(idx[a].mean(), abs=1e-4)
            assert r[f"centroid_{n}_um"] == pytest.approx(idx[a].mean() * SPACING[a], abs=1e-4)
        assert r["class_name"] == "class_0" and 1000 < r["score"] < 2000


def test_zarr_and_ome_zarr_outputs_carry_the_spacing(tmp_path, volume):
    raw, gt = volume
    cfg, _, vol = stub_command_files(tmp_path, raw, SPACING)
    for fmt, name in (("zarr", "vol_labels.zarr"), ("ome-zarr", "vol_labels.ome.zarr")):
        out = tmp_path / fmt
        assert _run(cfg, vol, out, "--format", fmt) == 0
        path = str(out / name)
        assert read_spacing(path) == pytest.approx(SPACING)
        assert same_partition(read_labels(path), gt)
        assert not os.path.exists(out / ".det3d-predict" / "vol" / "labels.zarr")


def test_folder_and_zarr_inputs(tmp_path, volume):
    import zarr

    raw, gt = volume
    cfg, _, vol = stub_command_files(tmp_path, raw, SPACING)
    folder = tmp_path / "stacks"
    folder.mkdir()
    os.replace(vol, folder / "a.tif")
    z = zarr.create_array(
        store=str(folder / "b.zarr"), shape=raw.shape[1:], dtype=raw.dtype, chunks=(8, 32, 32)
    )
    z[:] = raw[0]
    z.attrs["spacing"] = list(SPACING)
    assert _run(cfg, str(folder), tmp_path / "out") == 0
    for name in ("a", "b"):
        labels = read_labels(str(tmp_path / "out" / f"{name}_labels.tif"))
        assert same_partition(labels, gt)


def test_rerun_continues_refuses_other_results_and_overwrites_on_request(tmp_path, volume, capsys):
    raw, _ = volume
    cfg, _, vol = stub_command_files(tmp_path, raw, SPACING)
    out = tmp_path / "out"
    assert _run(cfg, vol, out) == 0
    result = out / "vol_labels.tif"
    before = (result.read_bytes(), os.stat(result).st_mtime_ns)
    assert _run(cfg, vol, out) == 0  # the same command again: nothing to do
    assert "already done" in capsys.readouterr().out
    assert (result.read_bytes(), os.stat(result).st_mtime_ns) == before
    # another command (other tile keys) over the same folder is refused, nothing touched
    assert _run(cfg, vol, out, "TEST.TILE.OVERLAP", "[8, 8, 8]") == 1
    assert "holds a run for vol made with another config" in capsys.readouterr().err
    assert os.stat(result).st_mtime_ns == before[1]
    assert _run(cfg, vol, out, "--overwrite", "TEST.TILE.OVERLAP", "[8, 8, 8]") == 0
    assert os.stat(result).st_mtime_ns != before[1]
    # results that are not det3d-predict's own run: refused, untouched
    other = tmp_path / "other"
    other.mkdir()
    (other / "vol_objects.csv").write_text("mine")
    assert _run(cfg, vol, other) == 1
    assert "already holds results" in capsys.readouterr().err
    assert (other / "vol_objects.csv").read_text() == "mine"


def test_foreground_threshold_and_mask_skip_background_tiles(tmp_path, volume, capsys):
    raw, gt = volume
    raw, gt = raw.copy(), gt.copy()
    raw[:, :, :, 40:] = 0  # objects only in the left half (ones cut by the edge stay, cut)
    cfg, _, vol = stub_command_files(tmp_path, raw, SPACING)
    assert _run(cfg, vol, tmp_path / "all") == 0
    reference = read_labels(str(tmp_path / "all" / "vol_labels.tif"))
    assert _run(cfg, vol, tmp_path / "thr", "--foreground-threshold", "500") == 0
    assert "skipped as background" in capsys.readouterr().out
    assert np.array_equal(read_labels(str(tmp_path / "thr" / "vol_labels.tif")), reference)
    mask = (raw[0, ::4, ::4, ::4] > 0).astype(np.uint8)  # a quarter of the resolution
    tifffile.imwrite(str(tmp_path / "mask.tif"), mask)
    assert _run(cfg, vol, tmp_path / "mask", "--mask", str(tmp_path / "mask.tif")) == 0
    out = capsys.readouterr().out
    skipped = int(out.split(" skipped as background")[0].rsplit(", ", 1)[-1])
    assert skipped > 0
    assert np.array_equal(read_labels(str(tmp_path / "mask" / "vol_labels.tif")), reference)


def _error(capsys, *argv) -> str:
    assert main(list(argv)) == 1
    return capsys.readouterr().err


def test_bad_inputs_are_refused_naming_file_or_key(tmp_path, volume, capsys):
    raw, _ = volume
    cfg, weights, vol = stub_command_files(tmp_path, raw, SPACING)
    out = str(tmp_path / "out")
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff at all")
    err = _error(capsys, "--config-file", cfg, "--input", str(bad), "--output", out)
    assert "broken.tif" in err
    five = tmp_path / "movie.tif"
    tifffile.imwrite(str(five), np.zeros((3, 4, 1, 8, 8), np.uint8), metadata={"axes": "TZCYX"})
    err = _error(capsys, "--config-file", cfg, "--input", str(five), "--output", out)
    assert "movie.tif" in err and "time points" in err
    two = tmp_path / "two.tif"
    tifffile.imwrite(
        str(two), np.zeros((2, 4, 8, 8), np.uint8), metadata={"axes": "CZYX"},
        photometric="minisblack",
    )
    err = _error(capsys, "--config-file", cfg, "--input", str(two), "--output", out)
    assert "two.tif" in err and "INPUT.IN_CHANNELS" in err
    err = _error(capsys, "--config-file", cfg, "--input", vol, "--output", out,
                 "TEST.TILE.OVERLAP", "[16, 8, 8]")
    assert "TEST.TILE.OVERLAP" in err
    err = _error(capsys, "--config-file", cfg, "--input", vol, "--output", out,
                 "MODEL.WEIGHTS", "")
    assert "MODEL.WEIGHTS is not set" in err
    err = _error(capsys, "--config-file", cfg, "--input", vol, "--output", out,
                 "MODEL.WEIGHTS", str(tmp_path / "missing.pth"))
    assert "missing.pth" in err
    err = _error(capsys, "--config-file", cfg, "--input", vol, "MODEL.WEIGHTS", weights,
                 "--output", out)
    assert "looks like a config key" in err
    err = _error(capsys, "--config-file", cfg, "--input", vol, "--output", out,
                 "--spacing", "0", "0.5", "0.5")
    assert "--spacing" in err and "0.0" in err
    err = _error(capsys, "--config-file", cfg, "--input", vol, "--output", out,
                 "INPUT.TARGET_SPACING", "[1.0, -0.5, 0.5]")
    assert "INPUT.TARGET_SPACING" in err and "-0.5" in err
    assert not os.path.exists(out)  # nothing was written for any of these


def test_tile_smaller_than_the_model_divisibility_is_refused(tmp_path, capsys):
    from det3d.config import get_cfg
    from det3d.modeling import build_model

    cfg = get_cfg()
    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quick_schedules",
                        "mask_rcnn_R18_FPN_3d_instant_test.yaml")
    cfg.merge_from_file(path)
    torch.save({"model": build_model(cfg).state_dict()}, str(tmp_path / "w.pth"))
    tifffile.imwrite(str(tmp_path / "v.tif"), np.zeros((8, 32, 32), np.uint16))
    err = _error(capsys, "--config-file", path, "--input", str(tmp_path / "v.tif"), "--output",
                 str(tmp_path / "out"), "MODEL.WEIGHTS", str(tmp_path / "w.pth"),
                 "TEST.TILE.SIZE", "[16, 64, 64]")
    assert "TEST.TILE.SIZE [16, 64, 64] is smaller than the model's size divisibility" in err


def test_output_names():
    assert predict_cli.output_name("a/vol.ome.tif") == "vol"
    assert predict_cli.output_name("b/big.zarr/") == "big"
    assert predict_cli.output_name("c/x.zarr/0") == "x_0"


def test_weights_of_another_model_are_refused_naming_the_file(tmp_path, capsys):
    # the instant Mask R-CNN config given weights of some other network: nothing it needs is there
    instant = os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "configs", "quick_schedules", "mask_rcnn_R18_FPN_3d_instant_test.yaml",
    )
    other = tmp_path / "other_net.pth"
    torch.save({"model": torch.nn.Linear(3, 2).state_dict()}, str(other))
    vol = tmp_path / "vol.tif"
    tifffile.imwrite(str(vol), np.zeros((16, 32, 32), np.uint16))
    out = tmp_path / "out"
    err = _error(capsys, "--config-file", instant, "--input", str(vol), "--output", str(out),
                 "--spacing", "1", "1", "1", "MODEL.WEIGHTS", str(other))
    assert "other_net.pth" in err and "does not fit" in err
    assert not out.exists()
