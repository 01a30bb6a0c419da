"""
Staged training (seed doc 000): (a) RPN only, (b) heads only on live proposals of the frozen
backbone + RPN, (c) everything; checkpoints of each stage load into the next.
"""

import logging

import pytest
import torch
from _rcnn_test_utils import single_thread, synthetic_input, tiny_cfg
from fvcore.common.checkpoint import Checkpointer

from det3d.modeling import build_model

HEAD_LOSSES = {"loss_cls", "loss_box_reg", "loss_mask"}
RPN_LOSSES = {"loss_rpn_cls", "loss_rpn_loc"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _train_steps(model, inputs, steps=1, lr=0.01):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    for _ in range(steps):
        losses = model(inputs)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return losses


def _load(model, path):
    checkpointer = Checkpointer(model)
    return checkpointer._load_model(checkpointer._load_file(path))


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("stages")
    # Two volumes: BatchNorm of the 1x1x1 res5 map needs more than one value per channel.
    inputs = [synthetic_input((16, 32, 32), seed=0), synthetic_input((16, 32, 32), seed=1)]

    # (a) RPN only
    cfg_a = tiny_cfg(3)
    cfg_a.MODEL.META_ARCHITECTURE = "ProposalNetwork3D"
    model_a = build_model(cfg_a)
    losses_a = _train_steps(model_a, inputs, steps=2)
    Checkpointer(model_a, save_dir=str(tmp)).save("stage_a")
    return {"tmp": tmp, "inputs": inputs, "losses_a": losses_a, "model_a": model_a}


def test_stage_a_trains_the_rpn_only(stages):
    assert set(stages["losses_a"]) == RPN_LOSSES
    names = {k.split(".")[0] for k in stages["model_a"].state_dict()}
    assert names == {"backbone", "proposal_generator"}


def test_stage_b_heads_on_frozen_rpn(stages, caplog):
    tmp, inputs = stages["tmp"], stages["inputs"]
    cfg_b = tiny_cfg(3)
    cfg_b.MODEL.FREEZE_MODULES = ["backbone", "proposal_generator"]
    with caplog.at_level(logging.INFO, logger="det3d.modeling.meta_arch.build"):
        model_b = build_model(cfg_b)
    assert "trainable parameters" in caplog.text

    incompatible = _load(model_b, str(tmp / "stage_a.pth"))
    heads_keys = {k for k in model_b.state_dict() if k.startswith("roi_heads.")}
    assert heads_keys and set(incompatible.missing_keys) == heads_keys
    assert not incompatible.unexpected_keys and not incompatible.incorrect_shapes

    frozen = {"backbone": model_b.backbone, "proposal_generator": model_b.proposal_generator}
    before = {name: _snapshot(m) for name, m in frozen.items()}
    heads_before = _snapshot(model_b.roi_heads)

    losses = _train_steps(model_b, inputs, steps=2)
    assert set(losses) == HEAD_LOSSES  # nothing from the frozen RPN
    assert all(torch.isfinite(v) for v in losses.values())
    for name, module in frozen.items():
        assert not module.training, f"{name} left eval mode under model.train()"
        for key, value in module.state_dict().items():  # parameters and BN statistics
            assert torch.equal(value, before[name][key]), f"{name}.{key} changed"
        for pname, p in module.named_parameters():
            assert not p.requires_grad and p.grad is None, f"{name}.{pname} has a gradient"
    assert model_b.roi_heads.training
    heads_after = model_b.roi_heads.state_dict()
    changed = [k for k, v in heads_after.items() if not torch.equal(v, heads_before[k])]
    assert any(k.startswith("box_predictor.") for k in changed)
    assert any(k.startswith("mask_head.") for k in changed)
    Checkpointer(model_b, save_dir=str(tmp)).save("stage_b")

    # The stage (b) result loads into a plain inference model with nothing missing, and gives
    # the same detections.
    model_inf = build_model(tiny_cfg(3))
    incompatible = _load(model_inf, str(tmp / "stage_b.pth"))
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    model_inf.eval()
    model_b.eval()
    with torch.no_grad():
        image = [{"image": inputs[0]["image"]}]
        a, b = model_b(image)[0], model_inf(image)[0]
    torch.testing.assert_close(a["instances"].scores, b["instances"].scores)
    assert torch.equal(a["instance_labels"], b["instance_labels"])

    # (c) end to end from the stage (b) weights: every loss is back.
    model_c = build_model(tiny_cfg(3))
    _load(model_c, str(tmp / "stage_b.pth"))
    losses = _train_steps(model_c, inputs, steps=1)
    assert set(losses) == HEAD_LOSSES | RPN_LOSSES


def test_frozen_roi_heads_give_no_losses():
    cfg = tiny_cfg(2)
    cfg.MODEL.FREEZE_MODULES = ["roi_heads"]
    model = build_model(cfg)
    model.train()
    assert not model.roi_heads.training and model.backbone.training
    losses = model([synthetic_input((64, 64), seed=0)])
    assert set(losses) == RPN_LOSSES


def test_unknown_freeze_module_is_named():
    cfg = tiny_cfg(3)
    cfg.MODEL.FREEZE_MODULES = ["backbone", "rpn"]
    with pytest.raises(ValueError, match=r"'rpn'.*backbone.*proposal_generator.*roi_heads"):
        build_model(cfg)
