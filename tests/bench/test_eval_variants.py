"""The settings bench/eval_variants.py compares, and what it refuses."""

import importlib
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench")


def _module():
    """bench/eval_variants.py, imported as the other bench scripts import it."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    return importlib.import_module("eval_variants")


def test_variants_keep_their_order_and_overrides():
    ev = _module()
    got = ev.parse_variants(
        [
            ["plain", "MODEL.ROI_HEADS.LABELS_IOU_POWER", "0.0"],
            ["iou", "MODEL.ROI_HEADS.LABELS_IOU_POWER", "1.0", "TEST.AMP.ENABLED", "True"],
        ]
    )
    assert list(got) == ["plain", "iou"]  # the first is the reference
    assert got["iou"] == ["MODEL.ROI_HEADS.LABELS_IOU_POWER", "1.0", "TEST.AMP.ENABLED", "True"]


@pytest.mark.parametrize(
    "specs,message",
    [
        ([["a", "KEY"], ["b", "KEY", "1"]], "--variant a KEY: give NAME then KEY VALUE pairs"),
        ([["a"], ["b", "KEY", "1"]], "--variant a: give NAME then KEY VALUE pairs"),
        ([["a", "KEY", "0"], ["a", "KEY", "1"]], "--variant a: names must be unique"),
        ([["a/b", "KEY", "0"], ["c", "KEY", "1"]], "--variant a/b: names must be unique folder"),
        ([["a", "KEY", "0"]], "at least two --variant"),
    ],
)
def test_bad_variants_are_named(specs, message):
    with pytest.raises(SystemExit, match=message):
        _module().parse_variants(specs)


def test_a_folder_that_is_not_a_finished_run_is_named(tmp_path):
    (tmp_path / "config.yaml").write_text("")
    with pytest.raises(SystemExit, match="no model_final.pth; not a finished training run"):
        _module().check_run(str(tmp_path))


def test_results_are_never_replaced(tmp_path):
    out = tmp_path / "toy3d_test" / "plain"
    out.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="results are never replaced"):
        _module().evaluate(str(tmp_path), "toy3d_test", [], str(out), 1)
