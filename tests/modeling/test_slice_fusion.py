"""
The slice-fusion modules inside SliceFusionRCNN: each trains (gradients reach its parameters) and
infers end to end; "center" initialisation is exactly the 2D model on the centre slice; window
padding; bad configs and inputs raise errors that name the key or the file.
"""

import pytest
import torch
from _rcnn_test_utils import single_thread, synthetic_input, tiny_cfg

from det3d.modeling import build_model
from det3d.modeling.meta_arch.slice_fusion_rcnn import slice_targets
from det3d.modeling.slice_fusion import base_slice_weights, slice_window_indices

# (NAME, STAGE, PER_LEVEL): every fusion, early and late where it has both
VARIANTS = [
    ("ChannelStack", "input", False),
    ("SliceWeights", "input", False),
    ("SliceWeights", "features", False),
    ("SliceWeights", "features", True),
    ("WindowedSliceWeights", "input", False),
    ("WindowedSliceWeights", "features", True),
    ("ConvFusion", "input", False),
    ("ConvFusion", "features", True),
    ("AttentionFusion", "features", False),
    ("AttentionFusion", "input", False),
]


def _cfg(name="SliceWeights", stage="features", per_level=False, num_slices=3, init="center"):
    cfg = tiny_cfg(3)
    cfg.MODEL.META_ARCHITECTURE = "SliceFusionRCNN"
    cfg.MODEL.RESNETS.NORM = "GN"  # per-sample norm: a slice's features do not depend on its batch
    sf = cfg.MODEL.SLICE_FUSION
    sf.NAME, sf.STAGE, sf.PER_LEVEL = name, stage, per_level
    sf.NUM_SLICES, sf.INIT = num_slices, init
    sf.MASK_RESOLUTION = [4, 8, 8]
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # untrained models: keep every detection
    cfg.MODEL.ROI_HEADS.LABELS_SCORE_THRESH_TEST = 0.0
    cfg.TEST.SLICE_BATCH_SIZE = 16
    return cfg


def _window_sample(seed=0):
    """What SliceDatasetMapper gives: a (1, 3, H, W) window and 2D instances of its centre."""
    vol = synthetic_input((3, 32, 32), seed=seed, num_objects=2)
    return {"image": vol["image"], "instances": slice_targets(vol["instances"], 1)}


@pytest.mark.parametrize("name,stage,per_level", VARIANTS)
def test_every_fusion_trains_and_infers(name, stage, per_level):
    torch.manual_seed(0)
    with single_thread():
        model = build_model(_cfg(name, stage, per_level))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        volume = synthetic_input((6, 32, 32), seed=1, num_objects=2)
        model.train()
        for step in range(3):  # learned refinements start at zero: gradients reach them later
            opt.zero_grad()
            # a whole 3D volume (target slices drawn inside) and a mapper's slice window
            losses = model([volume, _window_sample(step)])
            assert {"loss_rpn_cls", "loss_cls", "loss_mask"} <= set(losses)
            sum(losses.values()).backward()
            opt.step()
        if name == "ChannelStack":  # its learned part: the stem's weights on the 3 slices
            first = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
            grads = {"stem": first.weight.grad.view(first.out_channels, 3, -1)[:, [0, 2]]}
        else:
            grads = {k: p.grad for k, p in model.fusion.named_parameters()}
            assert grads, "the fusion has no parameters"
        for k, g in grads.items():
            assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, k
        model.eval()
        with torch.no_grad():
            (out,) = model([{"image": volume["image"], "depth": 6, "height": 32, "width": 32}])
    inst, labels = out["instances"], out["instance_labels"]
    assert labels.shape == (6, 32, 32) and labels.dtype == torch.int32
    assert inst.image_size == (6, 32, 32) and inst.pred_boxes.tensor.shape[1] == 6
    assert inst.pred_masks.shape[1:] == (4, 8, 8) and len(inst.scores) == len(inst)
    assert int(labels.max()) <= len(inst)


def _copy_2d_weights(model, ref):
    """Loads the 2D model's weights; ChannelStack's stem gets them on its centre slice."""
    state = ref.state_dict()
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if own[k].shape == v.shape}, strict=False)
    for k, v in state.items():
        if own[k].shape != v.shape:  # the stem conv: (O, 3C, kh, kw) against (O, C, kh, kw)
            with torch.no_grad():
                dict(model.named_parameters())[k][:, 1:2] = v
            model.fusion.init_backbone(model.backbone)


@pytest.mark.parametrize("name,stage,per_level", VARIANTS)
def test_center_init_is_exactly_the_2d_model_on_the_centre_slice(name, stage, per_level):
    torch.manual_seed(0)
    with single_thread():
        ref = build_model(_cfg("CenterSlice", "input", num_slices=1)).eval()
        model = build_model(_cfg(name, stage, per_level)).eval()
        _copy_2d_weights(model, ref)
        image = synthetic_input((6, 32, 32), seed=2, num_objects=3)["image"]
        with torch.no_grad():
            (a,) = ref([{"image": image}])
            (b,) = model([{"image": image}])
    assert len(a["instances"]) > 0
    assert torch.equal(a["instance_labels"], b["instance_labels"])
    for field in ("scores", "pred_classes", "pred_masks"):
        assert torch.equal(a["instances"].get(field), b["instances"].get(field)), field
    assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)


def test_uniform_init_is_the_mean_of_the_window():
    torch.manual_seed(0)
    model = build_model(_cfg("SliceWeights", "input", init="uniform"))
    x = torch.randn(2, 3, 1, 8, 8)
    out = model.fusion({"image": x})["image"]
    assert torch.allclose(out, x.mean(dim=1), atol=1e-6)
    assert torch.allclose(base_slice_weights(5, "uniform"), torch.full((5,), 0.2))
    assert base_slice_weights(5, "center").tolist() == [0, 0, 1, 0, 0]


def test_window_indices_at_the_volume_ends():
    assert slice_window_indices(0, 6, 5, "replicate") == [0, 0, 0, 1, 2]
    assert slice_window_indices(5, 6, 5, "replicate") == [3, 4, 5, 5, 5]
    assert slice_window_indices(0, 6, 5, "reflect") == [2, 1, 0, 1, 2]
    assert slice_window_indices(5, 6, 5, "reflect") == [3, 4, 5, 4, 3]
    assert slice_window_indices(1, 6, 5, "zeros") == [-1, 0, 1, 2, 3]
    assert slice_window_indices(3, 6, 1, "zeros") == [3]


@pytest.mark.parametrize("pad_mode", ["replicate", "reflect", "zeros"])
def test_windows_padded_as_configured(pad_mode):
    cfg = _cfg("SliceWeights", "input")
    cfg.MODEL.SLICE_FUSION.PAD_MODE = pad_mode
    model = build_model(cfg)
    image = torch.arange(4.0).view(1, 4, 1, 1).expand(1, 4, 2, 2).contiguous()
    idx = torch.tensor([slice_window_indices(z, 4, 3, pad_mode) for z in (0, 3)])
    windows = model._slices(image, idx) * model.pixel_std + model.pixel_mean  # undo normalising
    raw = windows[..., 0, 0, 0]
    expected = {
        "replicate": [[0, 0, 1], [2, 3, 3]],
        "reflect": [[1, 0, 1], [2, 3, 2]],
        "zeros": [[0, 0, 1], [2, 3, 0]],
    }[pad_mode]
    assert torch.allclose(raw, torch.tensor(expected, dtype=torch.float32))


@pytest.mark.parametrize("num_slices", [2, 4, 0, -1])
def test_even_or_too_small_num_slices_names_the_key(num_slices):
    with pytest.raises(ValueError, match="MODEL.SLICE_FUSION.NUM_SLICES"):
        build_model(_cfg(num_slices=num_slices))


def test_bad_config_combinations_name_the_key():
    with pytest.raises(ValueError, match="MODEL.SLICE_FUSION.STAGE 'input'"):
        build_model(_cfg("ChannelStack", "features"))
    with pytest.raises(ValueError, match="PER_LEVEL"):
        build_model(_cfg("SliceWeights", "input", per_level=True))
    with pytest.raises(ValueError, match="MODEL.SLICE_FUSION.INIT"):
        build_model(_cfg(init="gaussian"))
    cfg = _cfg()
    cfg.MODEL.SLICE_FUSION.PAD_MODE = "wrap"
    with pytest.raises(ValueError, match="MODEL.SLICE_FUSION.PAD_MODE"):
        build_model(cfg)
    cfg = _cfg()
    cfg.MODEL.SPATIAL_DIMS = 2
    with pytest.raises(ValueError, match="MODEL.SPATIAL_DIMS must be 3"):
        build_model(cfg)
    cfg = _cfg()
    cfg.TEST.MASK_FLIP_AXES = [2]
    with pytest.raises(ValueError, match="TEST.MASK_FLIP_AXES"):
        build_model(cfg)
    cfg = _cfg()
    cfg.TEST.FLIP_OBJECTNESS = True
    with pytest.raises(ValueError, match="TEST.FLIP_OBJECTNESS"):
        build_model(cfg)
    cfg = _cfg()
    cfg.TEST.OUTLINE_REFINE.ENABLED = True
    with pytest.raises(ValueError, match="TEST.OUTLINE_REFINE.ENABLED"):
        build_model(cfg)
    cfg = _cfg()
    cfg.TEST.BRIGHTNESS_SPLIT.ENABLED = True
    with pytest.raises(ValueError, match="TEST.BRIGHTNESS_SPLIT.ENABLED"):
        build_model(cfg)
    cfg = _cfg()
    cfg.MODEL.ROI_MASK_HEAD.IMAGE_REFINE_DIM = 8
    with pytest.raises(ValueError, match="IMAGE_REFINE_DIM"):
        build_model(cfg)
    cfg = _cfg()
    cfg.TEST.COUNTS_REFERENCE_SHAPE = [16, 32, 32]
    with pytest.raises(ValueError, match="TEST.COUNTS_REFERENCE_SHAPE"):
        build_model(cfg)
    cfg = _cfg()
    cfg.MODEL.ROI_BOX_HEAD.IOU_HEAD.ENABLED = True
    with pytest.raises(ValueError, match="MODEL.ROI_BOX_HEAD.IOU_HEAD.ENABLED"):
        build_model(cfg)


def test_thin_volume_and_2d_image_name_the_key_and_file():
    model = build_model(_cfg()).eval()
    thin = {"image": torch.rand(1, 2, 32, 32), "file_name": "thin.tif"}
    with pytest.raises(ValueError, match=r"thin.tif.*2 slices.*NUM_SLICES=3"):
        model([thin])
    flat = {"image": torch.rand(1, 32, 32), "file_name": "cells_2d.tif"}
    with pytest.raises(ValueError, match=r"cells_2d.tif.*2.5D config.*2D image"):
        model([flat])
    # a 2D file read as a volume of depth 1 (what DatasetMapper3D gives)
    flat = {"image": torch.rand(1, 1, 32, 32), "file_name": "cells_2d.tif"}
    with pytest.raises(ValueError, match=r"cells_2d.tif: a 2D image.*NUM_SLICES=3.*2.5D"):
        model([flat])
    model.train()
    window = _window_sample()
    window["image"] = window["image"][:, :1].expand(1, 5, 32, 32)
    with pytest.raises(ValueError, match="NUM_SLICES is 3"):
        model([window])


def test_frozen_parts_stay_and_the_rest_learns():
    torch.manual_seed(0)
    cfg = _cfg("ConvFusion", "input")
    cfg.MODEL.FREEZE_MODULES = ["backbone"]
    with single_thread():
        model = build_model(cfg)
        model.train()
        before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        for _ in range(2):
            opt.zero_grad()
            sum(model([_window_sample()]).values()).backward()
            opt.step()
    # the input fusion before the frozen backbone still gets gradients through it
    assert model.fusion.fusers["image"].conv.weight.grad.abs().sum() > 0
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
