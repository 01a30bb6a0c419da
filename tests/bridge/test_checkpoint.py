"""Detectron2's DetectionCheckpointer loads det3d checkpoints, and det3d's loads Detectron2's."""

import os

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.checkpoint import DetectionCheckpointer as D2Checkpointer  # noqa: E402

import det3d  # noqa: E402,F401
from det3d.checkpoint import DetectionCheckpointer  # noqa: E402
from det3d.config import get_cfg  # noqa: E402
from det3d.modeling import build_model  # noqa: E402

from _bridge_test_utils import ROOT  # noqa: E402

INSTANT = os.path.join(ROOT, "configs", "quick_schedules", "mask_rcnn_R18_FPN_3d_instant_test.yaml")


def _model(seed):
    cfg = get_cfg()
    cfg.merge_from_file(INSTANT)
    torch.manual_seed(seed)
    return build_model(cfg)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("writer,reader", [(DetectionCheckpointer, D2Checkpointer),
                                           (D2Checkpointer, DetectionCheckpointer)])  # fmt: skip
def test_checkpoints_load_across_libraries(tmp_path, writer, reader):
    saved, loaded = _model(0), _model(1)
    with pytest.raises(AssertionError):
        _assert_same_weights(saved, loaded)  # different seeds: the load below must do the work
    writer(saved, save_dir=str(tmp_path)).save("model_x", iteration=7)
    checkpointer = reader(loaded, save_dir=str(tmp_path))
    extra = checkpointer.resume_or_load("", resume=True)  # through the last_checkpoint tag
    _assert_same_weights(saved, loaded)
    assert extra["iteration"] == 7
