"""tools/demo.py on the instant schedule: trains, evaluates, writes the picture."""

import importlib.util
import logging
import os
import sys

import pytest

from det3d.data import DatasetCatalog, read_labels
from det3d.engine import default_argument_parser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSTANT = os.path.join(ROOT, "configs", "quick_schedules", "mask_rcnn_R18_FPN_3d_instant_test.yaml")


@pytest.fixture()
def demo():
    names = ("det3d", "fvcore")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names}
    sys_path = list(sys.path)  # demo.py puts tools/ on sys.path to import train_net
    path = os.path.join(ROOT, "tools", "demo.py")
    spec = importlib.util.spec_from_file_location("det3d_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path[:] = sys_path
    for n, (handlers, propagate) in saved.items():
        logging.getLogger(n).handlers[:] = handlers
        logging.getLogger(n).propagate = propagate
    from det3d.data import set_synthetic_root

    set_synthetic_root(None)


def test_demo_trains_evaluates_and_draws(demo, tmp_path, capsys):
    args = default_argument_parser().parse_args(
        ["--config-file", INSTANT, "OUTPUT_DIR", str(tmp_path / "out"),
         "SYNTHETIC.ROOT", str(tmp_path / "data"), "SOLVER.MAX_ITER", "2"]
    )  # fmt: skip
    results = demo.main(args)
    assert "seg" in results
    predictions = tmp_path / "out" / "predictions"
    records = DatasetCatalog.get("synthetic_tiny_val")
    for record in records:
        name = os.path.splitext(os.path.basename(record["file_name"]))[0]
        assert (predictions / f"{name}.png").stat().st_size > 0
        labels = read_labels(str(predictions / f"{name}_labels.tif"))
        assert labels.shape == (record["depth"], record["height"], record["width"])
    out = capsys.readouterr().out
    assert "seg/SEG" in out and str(predictions) in out

    # Run again over the same OUTPUT_DIR: the finished run is evaluated again, not retrained, and
    # its checkpoints stay as they were.
    final = tmp_path / "out" / "model_final.pth"
    before = (final.read_bytes(), final.stat().st_mtime_ns)
    again = demo.main(default_argument_parser().parse_args(
        ["--config-file", INSTANT, "OUTPUT_DIR", str(tmp_path / "out"),
         "SYNTHETIC.ROOT", str(tmp_path / "data"), "SOLVER.MAX_ITER", "2"]
    ))  # fmt: skip
    assert (final.read_bytes(), final.stat().st_mtime_ns) == before
    assert again["seg"] == results["seg"]


def test_demo_runs_the_2_5d_model(demo, tmp_path):
    config = os.path.join(
        ROOT, "configs", "quick_schedules", "slice_fusion_R18_FPN_instant_test.yaml"
    )
    args = default_argument_parser().parse_args(
        ["--config-file", config, "OUTPUT_DIR", str(tmp_path / "out"),
         "SYNTHETIC.ROOT", str(tmp_path / "data"), "SOLVER.MAX_ITER", "2"]
    )  # fmt: skip
    results = demo.main(args)
    assert {"segm", "matching", "seg"} <= set(results)
    for record in DatasetCatalog.get("synthetic_tiny_val"):
        name = os.path.splitext(os.path.basename(record["file_name"]))[0]
        labels = read_labels(str(tmp_path / "out" / "predictions" / f"{name}_labels.tif"))
        assert labels.shape == (record["depth"], record["height"], record["width"])
