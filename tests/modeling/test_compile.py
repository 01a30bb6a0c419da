"""torch.compile traces a det3d model end to end (the compiled ops have fake, autograd and
autocast kernels): compiled inference on the CPU equals eager."""

import torch
from _rcnn_test_utils import single_thread, synthetic_input, tiny_cfg

from det3d.modeling import build_model


def test_torch_compile_model_inference_equals_eager():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # an untrained model: keep its detections
    model = build_model(cfg).eval()
    inputs = [synthetic_input((16, 32, 32), seed=1)]
    inputs[0].pop("instances")
    with single_thread(), torch.no_grad():
        eager = model(inputs)
        compiled = torch.compile(model)(inputs)  # inductor, C++ on the CPU
    (a,), (b,) = eager, compiled
    assert len(a["instances"]) > 0
    torch.testing.assert_close(b["instances"].pred_boxes.tensor, a["instances"].pred_boxes.tensor)
    torch.testing.assert_close(b["instances"].scores, a["instances"].scores)
    torch.testing.assert_close(b["instances"].pred_masks, a["instances"].pred_masks)
    assert torch.equal(b["instance_labels"], a["instance_labels"])
