"""TEST.COUNTS_REFERENCE_SHAPE: proposal and detection counts scaled with the input's voxels."""

import pytest
import torch
from _rcnn_test_utils import single_thread

from det3d.modeling.counts import counts_reference_voxels, scaled_count
from det3d.modeling.proposal_generator import find_top_rpn_proposals
from det3d.modeling.roi_heads import fast_rcnn_inference
from det3d.structures import ImageList


def test_scaled_count_grows_with_the_voxels_only():
    ref = 16.0 * 16 * 16
    assert scaled_count(20, (32, 32, 32), ref) == 160  # 8x the voxels
    assert scaled_count(20, (16, 16, 24), ref) == 30  # 1.5x
    assert scaled_count(7, (16, 16, 17), ref) == 8  # 7.4375 rounds up
    assert scaled_count(20, (8, 16, 16), ref) == 20  # smaller inputs keep the count
    assert scaled_count(20, (32, 32, 32), 0.0) == 20  # no reference: fixed
    assert scaled_count(-1, (32, 32, 32), ref) == -1  # no limit stays no limit
    assert counts_reference_voxels([], 3) == 0.0
    assert counts_reference_voxels([4, 8, 16], 3) == 512.0


@pytest.mark.parametrize("bad", [[64, 64], [64, 0, 64], [64, 64.5, 64], [-1, 2, 2]])
def test_reference_shape_must_be_one_positive_size_per_axis(bad):
    with pytest.raises(ValueError, match=r"TEST.COUNTS_REFERENCE_SHAPE must be \[\] or 3 positive"):
        counts_reference_voxels(bad, 3)


def test_fast_rcnn_inference_keeps_more_detections_in_larger_images():
    # 300 separate boxes in a 10 x 1000 image; 7 per image at the reference 10 x 100
    lo = torch.arange(300, dtype=torch.float32)[:, None] * 3
    boxes = torch.cat([lo, torch.zeros(300, 1), lo + 2, torch.full((300, 1), 2.0)], 1)
    scores = torch.stack([torch.linspace(0.9, 0.5, 300), torch.linspace(0.1, 0.5, 300)], 1)
    sizes = [(10, 1000), (10, 50)]

    def args():  # inference clips the boxes in place
        return [boxes.clone(), boxes.clone()], [scores, scores], sizes, 0.05, 0.5, 7

    (big, small), _ = fast_rcnn_inference(*args(), counts_reference_voxels=10 * 100)
    assert len(big) == 70 and len(small) == 7
    (fixed, _), _ = fast_rcnn_inference(*args())
    assert len(fixed) == 7
    # the 70 are the 70 best
    (top,), _ = fast_rcnn_inference([boxes.clone()], [scores], [(10, 1000)], 0.05, 0.5, 70)
    assert torch.equal(big.pred_boxes.tensor, top.pred_boxes.tensor)


def test_post_nms_topk_per_image_equals_separate_calls():
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(2, 60, 3, generator=g) * 20
    proposals = [torch.cat([lo, lo + 1 + torch.rand(2, 60, 3, generator=g) * 8], dim=2)]
    logits = [torch.randn(2, 60, generator=g)]
    sizes = [(32, 32, 32), (32, 32, 32)]
    both = find_top_rpn_proposals(proposals, logits, sizes, 0.5, 60, [4, 9], 0.0)
    for n, k in enumerate([4, 9]):
        (alone,) = find_top_rpn_proposals(
            [proposals[0][n : n + 1]], [logits[0][n : n + 1]], sizes[:1], 0.5, 60, k, 0.0
        )
        assert len(both[n]) == k
        assert torch.equal(both[n].proposal_boxes.tensor, alone.proposal_boxes.tensor)


def test_rpn_keeps_proposals_in_proportion_to_the_input_at_inference_only():
    from test_rpn import _build, _cfg

    with single_thread():
        torch.manual_seed(0)
        cfg = _cfg(3)
        cfg.MODEL.RPN.NMS_THRESH = 0.99
        cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 50
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 10
        cfg.TEST.COUNTS_REFERENCE_SHAPE = [12, 16, 16]
        backbone, rpn = _build(cfg)
        x = torch.randn(1, 1, 12, 32, 32, generator=torch.Generator().manual_seed(1))
        images = ImageList(x, [(12, 32, 32)])
        rpn.eval()
        with torch.no_grad():
            feats = backbone(x)
            (scaled,), _ = rpn(images, feats)
            rpn.train()  # training keeps its own counts (POST_NMS_TOPK_TRAIN 50 of 200 per level)
            (trained,), _ = rpn(images, feats)
            rpn.eval()
            rpn.counts_reference_voxels = 0.0
            (fixed,), _ = rpn(images, feats)
    # 4x the reference's voxels: 40 proposals from 200 per level instead of 10 from 50
    assert len(fixed) == 10 and len(scaled) == 40 and len(trained) == 50
    assert torch.equal(scaled.proposal_boxes.tensor[:10], fixed.proposal_boxes.tensor)
