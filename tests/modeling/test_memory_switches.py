"""
The memory-saving switches leave results as they are: activation checkpointing of the backbone
(MODEL.BACKBONE.CHECKPOINT), RoI chunking at inference (TEST.ROI_CHUNK_SIZE) and bfloat16
autocast on CPU (SOLVER.AMP / TEST.AMP, within bfloat16's precision).
"""

import pytest
import torch
from _rcnn_test_utils import single_thread, synthetic_input, tiny_cfg

from det3d.layers import ShapeSpec
from det3d.modeling import BACKBONE_REGISTRY, Backbone, build_backbone, build_model
from det3d.modeling.roi_heads.roi_heads import roi_chunks
from det3d.utils.events import EventStorage


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _inputs(n=2, shape=(16, 32, 32)):
    return [synthetic_input(shape, seed=s, num_objects=3) for s in range(n)]


def _train_step(cfg, inputs, autocast=False):
    """Losses, gradients and BN buffers after one forward/backward from seed 0."""
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    torch.manual_seed(1)  # proposal sampling draws from the global generator
    with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        losses = model(inputs)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
    return {k: v.detach() for k, v in losses.items()}, grads, buffers


@pytest.mark.parametrize("norm", ["BN", "GN"])
def test_backbone_checkpoint_gives_same_losses_gradients_and_bn_statistics(norm):
    cfg = tiny_cfg()
    cfg.MODEL.RESNETS.NORM = norm
    inputs = _inputs()
    ref_losses, ref_grads, ref_buffers = _train_step(cfg, inputs)
    cfg.MODEL.BACKBONE.CHECKPOINT = True
    losses, grads, buffers = _train_step(cfg, inputs)
    assert losses.keys() == ref_losses.keys()
    for k in losses:
        torch.testing.assert_close(losses[k], ref_losses[k], rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and len(grads) > 20
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6)
    # BN statistics are updated once per step, not again by the recomputation
    assert buffers.keys() == ref_buffers.keys()
    assert (len(buffers) > 0) == (norm == "BN")
    for k in buffers:
        torch.testing.assert_close(buffers[k], ref_buffers[k], rtol=1e-6, atol=1e-7)


def test_backbone_checkpoint_recomputes_instead_of_storing():
    cfg = tiny_cfg()
    cfg.MODEL.RESNETS.NORM = "GN"  # BN cannot train on res5's single voxel
    cfg.MODEL.BACKBONE.CHECKPOINT = True
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    block = backbone.bottom_up.res2[0]
    calls = []
    # a pre-hook: the recomputation stops early, once it has what the backward pass needs
    block.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    x = torch.randn(1, 1, 16, 32, 32)
    sum(v.sum() for v in backbone(x).values()).backward()
    assert len(calls) == 2  # forward, then the recomputation in the backward pass
    calls.clear()
    with torch.no_grad():
        backbone(x)
    assert len(calls) == 1  # nothing to recompute without autograd


def test_backbone_checkpoint_with_frozen_stages():
    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    inputs = _inputs(2)
    ref_losses, ref_grads, _ = _train_step(cfg, inputs)
    cfg.MODEL.BACKBONE.CHECKPOINT = True
    losses, grads, _ = _train_step(cfg, inputs)
    assert not any(k.startswith("backbone.bottom_up.res2") for k in grads)
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6)


@BACKBONE_REGISTRY.register()
def _build_backbone_without_checkpointing_for_test(cfg, input_shape):
    class _Plain(Backbone):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(input_shape.channels, 4, 1)
            self._out_features = ["p2"]
            self._out_feature_channels = {"p2": 4}
            self._out_feature_strides = {"p2": (1, 1, 1)}

        def forward(self, x):
            return {"p2": self.conv(x)}

    return _Plain()


def test_checkpoint_on_a_backbone_that_cannot_raises():
    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.NAME = "_build_backbone_without_checkpointing_for_test"
    assert isinstance(build_backbone(cfg, ShapeSpec(channels=1)), Backbone)
    cfg.MODEL.BACKBONE.CHECKPOINT = True
    with pytest.raises(NotImplementedError, match="MODEL.BACKBONE.CHECKPOINT"):
        build_backbone(cfg, ShapeSpec(channels=1))


def test_roi_chunks_cover_every_roi_once_in_order():
    assert roi_chunks([3, 4], 0) == [[(0, 3), (0, 4)]]
    assert roi_chunks([3, 4], 7) == [[(0, 3), (0, 4)]]
    chunks = roi_chunks([3, 0, 4], 2)
    assert chunks == [
        [(0, 2), (0, 0), (0, 0)],
        [(2, 3), (0, 0), (0, 1)],
        [(3, 3), (0, 0), (1, 3)],
        [(3, 3), (0, 0), (3, 4)],
    ]
    for lengths, size in [([5, 1, 7], 3), ([0, 9], 4), ([10], 1)]:
        chunks = roi_chunks(lengths, size)
        assert all(sum(b - a for a, b in c) <= size for c in chunks)
        for i, n in enumerate(lengths):  # consecutive slices that tile each image's RoIs
            starts = [a for a, b in (c[i] for c in chunks) if b > a]
            ends = [b for a, b in (c[i] for c in chunks) if b > a]
            assert starts == ([0] + ends[:-1] if ends else [])
            assert (ends[-1] if ends else 0) == n


def test_roi_chunking_gives_the_same_detections_and_masks():
    cfg = tiny_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # many detections: several mask chunks
    cfg.TEST.ROI_CHUNK_SIZE = 0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = [{"image": x["image"]} for x in _inputs()]
    with torch.no_grad():
        ref = model(inputs)
    calls = []
    # (RoIs, images) of each mask-head call
    hook = lambda m, i, o: calls.append((len(i[0]), len(i[1])))  # noqa: E731
    model.roi_heads.mask_head.register_forward_hook(hook)
    model.roi_heads.roi_chunk_size = 7
    with torch.no_grad():
        out = model(inputs)
    assert len(calls) > 2 and all(n <= 7 and k == 2 for n, k in calls)
    for r, o in zip(ref, out):
        a, b = r["instances"], o["instances"]
        assert len(a) == len(b) > 14
        torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor)
        torch.testing.assert_close(b.scores, a.scores)
        assert torch.equal(b.pred_classes, a.pred_classes)
        torch.testing.assert_close(b.pred_masks, a.pred_masks, rtol=1e-5, atol=1e-6)
        assert torch.equal(o["instance_labels"], r["instance_labels"])


def test_roi_chunk_size_is_read_from_the_config():
    cfg = tiny_cfg()
    cfg.TEST.ROI_CHUNK_SIZE = 5
    assert build_model(cfg).roi_heads.roi_chunk_size == 5


def test_bfloat16_autocast_training_losses_match_float32():
    cfg = tiny_cfg()
    inputs = _inputs()
    ref_losses, ref_grads, _ = _train_step(cfg, inputs)
    losses, grads, _ = _train_step(cfg, inputs, autocast=True)
    for k in ref_losses:
        assert losses[k].dtype == torch.float32
        # bfloat16 keeps 8 bits of mantissa: ~0.4% per op, a few % after a network
        torch.testing.assert_close(losses[k], ref_losses[k], rtol=0.05, atol=2e-3)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert grads[k].dtype == torch.float32


def test_inference_autocast_outputs_float32_close_to_float32_run():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = _inputs(1)[0]["image"]
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        ref_feats = model.backbone(images.tensor)
        ref_props, _ = model.proposal_generator(images, ref_feats, None)
        ref_scores, ref_deltas = model.roi_heads.box_predictor(
            model.roi_heads.box_head(
                model.roi_heads.box_pooler(
                    [ref_feats[f] for f in model.roi_heads.box_in_features],
                    [ref_props[0].proposal_boxes],
                )
            )
        )
        model.inference_amp = "bfloat16"
        with model.inference_autocast():
            feats = model.backbone(images.tensor)
            scores, deltas = model.roi_heads.box_predictor(
                model.roi_heads.box_head(
                    model.roi_heads.box_pooler(
                        [feats[f] for f in model.roi_heads.box_in_features],
                        [ref_props[0].proposal_boxes],
                    )
                )
            )
        out = model([{"image": image}])[0]
    assert feats["p2"].dtype == torch.bfloat16
    for name, f in feats.items():
        scale = ref_feats[name].abs().max()
        torch.testing.assert_close(f.float(), ref_feats[name], rtol=0, atol=0.05 * scale)
    assert scores.dtype == deltas.dtype == torch.float32
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=0.05 * ref_scores.abs().max())
    torch.testing.assert_close(deltas, ref_deltas, rtol=0, atol=0.05 * ref_deltas.abs().max())
    inst = out["instances"]
    assert len(inst) > 0
    for field in ("scores", "pred_masks"):
        assert inst.get(field).dtype == torch.float32
    assert inst.pred_boxes.tensor.dtype == torch.float32
    assert out["instance_labels"].dtype == torch.int32


def test_inference_amp_float16_on_cpu_raises_at_build_time():
    cfg = tiny_cfg()
    cfg.TEST.AMP.ENABLED = True
    cfg.TEST.AMP.DTYPE = "float16"
    with pytest.raises(ValueError, match="TEST.AMP.DTYPE"):
        build_model(cfg)
    cfg.TEST.AMP.DTYPE = "bfloat16"
    assert build_model(cfg).inference_amp == "bfloat16"
