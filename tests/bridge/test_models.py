"""
Every shipped config builds through Detectron2 (``detectron2.config.get_cfg()`` +
``add_det3d_config`` + the yaml, ``detectron2.modeling.build_model``) into the same model as
det3d alone builds (``det3d.config.get_cfg()`` + the yaml, ``det3d.modeling.build_model``): same
weights for the same seed, equal training losses and gradients, equal inference after a step.
"""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")

import detectron2.config  # noqa: E402
import detectron2.modeling  # noqa: E402
from detectron2.utils.events import EventStorage as D2EventStorage  # noqa: E402

import det3d  # noqa: E402,F401
from det3d.config import add_det3d_config  # noqa: E402
from det3d.config import get_cfg as det3d_get_cfg  # noqa: E402
from det3d.data import label_volume_to_instances, make_synthetic_volume  # noqa: E402
from det3d.modeling import build_model as det3d_build_model  # noqa: E402
from det3d.utils.events import EventStorage  # noqa: E402

from _bridge_test_utils import ROOT, SHIPPED_CONFIGS  # noqa: E402


def _configs(path):
    d2 = detectron2.config.get_cfg()
    add_det3d_config(d2)
    d2.merge_from_file(path)
    alone = det3d_get_cfg()
    alone.merge_from_file(path)
    for cfg in (d2, alone):
        cfg.MODEL.DEVICE = "cpu"  # the GPU configs run here on the CPU
    return d2, alone


def _input(cfg, seed=0):
    """One synthetic volume with its instances, classes folded into the config's NUM_CLASSES."""
    image, labels, classes = make_synthetic_volume(
        shape=(16, 48, 48), num_objects=3, size_range=(3.0, 5.0), spacing=(1.0, 0.5, 0.5), seed=seed
    )
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    instances = label_volume_to_instances(labels, {i: c % num_classes for i, c in classes.items()})
    channels = len(cfg.MODEL.PIXEL_MEAN)
    volume = torch.from_numpy(np.repeat(image[:1], channels, axis=0).astype(np.float32))
    return {"image": volume, "instances": instances, "depth": 16, "height": 48, "width": 48}


def _train_losses(model, batch, storage):
    model.train()
    torch.manual_seed(1)  # the samplers draw from torch's generator
    with storage:
        losses = model(batch)
    return {k: v for k, v in losses.items()}


def _assert_equal_outputs(a, b):
    assert len(a) == len(b)
    for out_a, out_b in zip(a, b):
        assert out_a.keys() == out_b.keys()
        for key in out_a:
            va, vb = out_a[key], out_b[key]
            if isinstance(va, torch.Tensor):
                assert torch.equal(va, vb), key
                continue
            fa, fb = va.get_fields(), vb.get_fields()
            assert fa.keys() == fb.keys(), key
            for name in fa:
                ta = getattr(fa[name], "tensor", fa[name])
                tb = getattr(fb[name], "tensor", fb[name])
                assert torch.equal(ta, tb), (key, name)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_shipped_config_builds_and_trains_alike_in_detectron2(path):
    _builds_and_trains_alike(*_configs(path))


def test_cascade_heads_build_and_train_alike_in_detectron2():
    d2_cfg, alone_cfg = _configs(
        os.path.join(ROOT, "configs/Synthetic/mask_rcnn_R18_FPN_3d_demo.yaml")
    )
    for cfg in (d2_cfg, alone_cfg):
        cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads3D"
        cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    # Detectron2's own ROI_BOX_CASCADE_HEAD (2D weights) gave way to det3d's (6 per stage)
    assert [len(w) for w in d2_cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS] == [6, 6, 6]
    _builds_and_trains_alike(d2_cfg, alone_cfg)


def _builds_and_trains_alike(d2_cfg, alone_cfg):
    torch.manual_seed(0)
    d2_model = detectron2.modeling.build_model(d2_cfg)
    torch.manual_seed(0)
    alone_model = det3d_build_model(alone_cfg)
    assert type(d2_model) is type(alone_model)
    d2_state, alone_state = d2_model.state_dict(), alone_model.state_dict()
    assert d2_state.keys() == alone_state.keys()
    for k in d2_state:
        assert torch.equal(d2_state[k], alone_state[k]), k

    batch = [_input(d2_cfg)]
    d2_storage = D2EventStorage(0)  # the storage of Detectron2's trainer gets det3d's statistics
    d2_losses = _train_losses(d2_model, batch, d2_storage)
    alone_losses = _train_losses(alone_model, batch, EventStorage(0))
    assert d2_losses.keys() == alone_losses.keys() and len(d2_losses)
    for k in d2_losses:
        assert torch.isfinite(d2_losses[k]), k
        assert torch.equal(d2_losses[k], alone_losses[k]), k
    if "loss_rpn_cls" in d2_losses:
        assert "rpn/num_pos_anchors" in d2_storage.latest()
    # One SGD step on each: equal gradients, so equal weights for the inference below.
    for model, losses in ((d2_model, d2_losses), (alone_model, alone_losses)):
        sum(losses.values()).backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.01 * p.grad
    for (name, p), q in zip(d2_model.named_parameters(), alone_model.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        assert p.grad is None or torch.equal(p.grad, q.grad), name

    test_batch = [{k: v for k, v in batch[0].items() if k != "instances"}]
    outputs = []
    for model in (d2_model, alone_model):
        model.eval()
        with torch.no_grad():
            outputs.append(model(test_batch))
    _assert_equal_outputs(*outputs)
