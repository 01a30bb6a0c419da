"""Box rescaling, mask pasting and label volumes (det3d.modeling.postprocessing)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from det3d.modeling.postprocessing import (
    detector_postprocess,
    instances_to_label_volume,
    paste_mask,
)
from det3d.structures import Boxes, Instances


@pytest.mark.parametrize("shape", [(6, 8, 10), (8, 10)])
def test_paste_mask_of_full_box_reproduces_mask(shape):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(shape, generator=g)
    box = torch.tensor([0.0] * len(shape) + list(reversed(shape)), dtype=torch.float32)
    slices, local = paste_mask(mask, box, shape, threshold=0.5)
    assert slices == tuple(slice(0, s) for s in shape)
    assert local.dtype == torch.bool
    assert torch.equal(local, mask >= 0.5)


def test_paste_mask_upsamples_over_box_and_clips_to_image():
    # A 2x2 mask with one "on" cell fills the matching quadrant of a 4x4 box.
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    slices, local = paste_mask(mask, torch.tensor([3.0, 5.0, 7.0, 9.0]), (20, 20), 0.5)
    assert slices == (slice(5, 9), slice(3, 7))
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:2, :2] = True
    assert torch.equal(local, expected)

    # A box hanging over the image border: only the inside part is returned, cut consistently.
    mask = torch.zeros(4, 4, 4)
    mask[:, :, 2:] = 1.0  # the right half along x
    slices, local = paste_mask(mask, torch.tensor([-2.0, 0, 0, 2, 4, 4]), (4, 4, 4), 0.5)
    assert slices == (slice(0, 4), slice(0, 4), slice(0, 2))
    assert local.shape == (4, 4, 2) and bool(local.all())

    # Entirely outside: an empty region.
    slices, local = paste_mask(mask, torch.tensor([10.0, 0, 0, 14, 4, 4]), (4, 4, 4), 0.5)
    assert local.numel() == 0


def test_label_volume_overlaps_resolved_by_score():
    shape = (8, 8, 8)
    inst = Instances(shape)
    # Row 0 (low score) and row 1 (high score) overlap on x in [3, 5).
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0, 0, 5, 4, 4], [3.0, 0, 0, 8, 4, 4]]))
    inst.scores = torch.tensor([0.3, 0.9])
    inst.pred_classes = torch.tensor([0, 0])
    inst.pred_masks = torch.ones(2, 4, 4, 4)
    labels = instances_to_label_volume(inst, shape, threshold=0.5)
    assert labels.dtype == torch.int32 and labels.shape == shape
    assert (labels[:4, :4, 0:3] == 1).all()
    assert (labels[:4, :4, 3:8] == 2).all()  # the overlap belongs to the higher score
    assert (labels[4:] == 0).all() and (labels[:, 4:] == 0).all()

    # Without masks every voxel of the box is claimed; with no instances the volume is empty.
    inst.remove("pred_masks")
    assert torch.equal(instances_to_label_volume(inst, shape), labels)
    assert instances_to_label_volume(inst[:0], shape).sum() == 0


def test_label_volume_uses_masks_inside_boxes_only():
    shape = (4, 8, 8)
    inst = Instances(shape)
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0, 0, 4, 4, 2]]))
    inst.scores = torch.tensor([0.5])
    m = torch.zeros(2, 4, 4)
    m[:, :2, :2] = 1.0
    inst.pred_masks = m[None]
    labels = instances_to_label_volume(inst, shape, 0.5)
    assert labels.sum() == 2 * 2 * 2
    assert (labels[:2, :2, :2] == 1).all()


def test_detector_postprocess_rescales_per_axis():
    inst = Instances((8, 16, 32))
    inst.pred_boxes = Boxes(
        torch.tensor([[4.0, 2, 1, 8, 4, 2], [30.0, 15, 7, 40, 20, 9], [40.0, 0, 0, 50, 1, 1]])
    )
    inst.scores = torch.tensor([0.9, 0.8, 0.7])
    out = detector_postprocess(inst, (16, 16, 16))  # x halves, y stays, z doubles
    assert out.image_size == (16, 16, 16)
    assert len(out) == 2  # the third box lies outside the volume: empty after clipping
    torch.testing.assert_close(out.pred_boxes.tensor[0], torch.tensor([2.0, 2, 2, 4, 4, 4]))
    torch.testing.assert_close(out.pred_boxes.tensor[1], torch.tensor([15.0, 15, 14, 16, 16, 16]))
    torch.testing.assert_close(out.scores, torch.tensor([0.9, 0.8]))
    assert inst.pred_boxes.tensor[0, 0] == 4.0  # the input is left alone

    proposals = Instances((10, 10))
    proposals.proposal_boxes = Boxes(torch.tensor([[1.0, 1, 5, 5]]))
    out = detector_postprocess(proposals, (20, 40))
    torch.testing.assert_close(out.proposal_boxes.tensor, torch.tensor([[4.0, 2, 20, 10]]))


_MEMORY_SCRIPT = textwrap.dedent("""
    import resource, torch
    from det3d.modeling.postprocessing import instances_to_label_volume
    from det3d.structures import Boxes, Instances
    torch.manual_seed(0)
    n, shape = 300, (64, 256, 256)
    lo = torch.rand(n, 3) * torch.tensor([224.0, 224.0, 32.0])
    size = 8 + torch.rand(n, 3) * torch.tensor([24.0, 24.0, 24.0])
    inst = Instances(shape)
    inst.pred_boxes = Boxes(torch.cat([lo, lo + size], dim=1))
    inst.scores = torch.rand(n)
    inst.pred_masks = torch.rand(n, 14, 28, 28)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    labels = instances_to_label_volume(inst, shape, 0.5)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert labels.shape == shape and int(labels.max()) > 0
    print((after - before) // 1024)
    """)


def test_label_volume_memory_does_not_grow_with_instances_times_volume():
    # 300 instances on a 64x256x256 volume: an (N, D, H, W) bool tensor would be 1.2 GB. The
    # label volume itself is 16 MB; allow generous slack for allocator noise, not N x volume.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    peak_growth_mb = int(out.stdout.strip().splitlines()[-1])
    assert peak_growth_mb < 200, f"post-processing grew peak memory by {peak_growth_mb} MB"


def test_label_volume_leaves_out_low_scores():
    shape = (4, 8, 8)
    inst = Instances(shape)
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0, 0, 4, 4, 2], [4.0, 4, 2, 8, 8, 4]]))
    inst.scores = torch.tensor([0.3, 0.9])
    labels = instances_to_label_volume(inst, shape, 0.5, score_threshold=0.5)
    # row 1 (score 0.9) keeps its label 2; row 0 (0.3) is not pasted at all
    assert set(labels.unique().tolist()) == {0, 2}
    assert (labels[2:4, 4:8, 4:8] == 2).all()
    everything = instances_to_label_volume(inst, shape, 0.5, score_threshold=0.0)
    assert set(everything.unique().tolist()) == {0, 1, 2}


@pytest.mark.parametrize("overlap_threshold, kept", [(0.5, {0, 1, 3}), (0.9, {0, 1, 2, 3})])
def test_label_volume_drops_detections_mostly_claimed_already(overlap_threshold, kept):
    # Row 0 (score 0.9) claims x in [0, 6); row 1 (0.8, another class) re-detects the same object
    # shifted by one voxel: 5 of its 6 columns are taken (83%), so only its rim would remain.
    # Row 2 (0.7) overlaps row 0 by 2 of 6 columns (33%) and keeps its free part either way.
    shape = (2, 4, 16)
    inst = Instances(shape)
    inst.pred_boxes = Boxes(
        torch.tensor([[0.0, 0, 0, 6, 4, 2], [1.0, 0, 0, 7, 4, 2], [4.0, 0, 0, 10, 4, 2]])
    )
    inst.scores = torch.tensor([0.9, 0.8, 0.7])
    labels = instances_to_label_volume(inst, shape, 0.5, overlap_threshold=overlap_threshold)
    assert set(labels.unique().tolist()) == kept
    # the reference: each voxel's label, written out
    ref = torch.zeros(shape, dtype=torch.int32)
    ref[..., 0:6] = 1
    if 2 in kept:
        ref[..., 6:7] = 2
        ref[..., 7:10] = 3
    else:
        ref[..., 6:10] = 3
    assert torch.equal(labels, ref)


def test_label_volume_keeps_an_object_whose_class_probability_is_split():
    # One RoI torn between two classes (0.45 each, background 0.1) gives two detections that each
    # score below 0.5; the object is still confident (objectness 0.9) and must enter the label
    # volume once, under its more likely class. A RoI with objectness 0.3 stays out.
    from det3d.modeling.roi_heads.fast_rcnn import fast_rcnn_inference

    shape = (4, 16, 16)
    box_a = [2.0, 2, 0, 8, 8, 4]
    box_b = [10.0, 10, 0, 14, 14, 4]
    boxes = torch.tensor([box_a * 2, box_b * 2])  # (R, K * 6), same box for both classes
    probs = torch.tensor([[0.44, 0.46, 0.10], [0.2, 0.1, 0.7]])
    (inst,), _ = fast_rcnn_inference([boxes], [probs], [shape], 0.05, 0.5, 100)
    assert (inst.scores < 0.5).all() and len(inst) == 4
    labels = instances_to_label_volume(inst, shape, 0.5, score_threshold=0.5)
    ids = [i for i in labels.unique().tolist() if i]
    assert len(ids) == 1
    row = ids[0] - 1
    assert inst.pred_classes[row] == 1 and inst.objectness[row] == pytest.approx(0.9)
    ref = torch.zeros(shape, dtype=torch.int32)
    ref[0:4, 2:8, 2:8] = ids[0]
    assert torch.equal(labels, ref)
    # ranked by score alone (no objectness field), nothing would enter at 0.5
    inst.remove("objectness")
    assert not instances_to_label_volume(inst, shape, 0.5, score_threshold=0.5).any()


def test_masks_are_pasted_into_their_mask_boxes():
    # A mask predicted on an enlarged box (pred_mask_boxes) may reach past pred_boxes; the label
    # volume pastes it where it was predicted, and detector_postprocess rescales (not clips) it.
    shape = (4, 8, 16)
    inst = Instances(shape)
    inst.pred_boxes = Boxes(torch.tensor([[4.0, 2, 0, 8, 6, 4]]))
    inst.pred_mask_boxes = Boxes(torch.tensor([[2.0, 2, 0, 10, 6, 4]]))
    inst.scores = torch.tensor([0.9])
    inst.pred_masks = torch.ones(1, 4, 4, 8)
    labels = instances_to_label_volume(inst, shape, 0.5)
    ref = torch.zeros(shape, dtype=torch.int32)
    ref[0:4, 2:6, 2:10] = 1
    assert torch.equal(labels, ref)
    big = detector_postprocess(inst, (8, 16, 32))
    assert torch.equal(big.pred_mask_boxes.tensor, torch.tensor([[4.0, 4, 0, 20, 12, 8]]))
    out = Instances((4, 8, 8))
    out.pred_boxes = Boxes(torch.tensor([[4.0, 2, 0, 8, 6, 4]]))
    out.pred_mask_boxes = Boxes(torch.tensor([[2.0, 2, 0, 10, 6, 4]]))
    assert detector_postprocess(out, (4, 8, 8)).pred_mask_boxes.tensor[0, 3] == 10  # not clipped


def test_contested_voxels_go_to_the_more_confident_mask():
    # Two touching objects along x; the more confident detection (row 0) bleeds its mask two
    # voxels into its neighbour at a low probability. "mask_prob" gives those voxels to the
    # neighbour, whose own mask is sure of them; "first" leaves them with row 0.
    shape = (4, 4, 12)
    inst = Instances(
        shape,
        pred_boxes=Boxes(torch.tensor([[0.0, 0, 0, 8, 4, 4], [6.0, 0, 0, 12, 4, 4]])),
        scores=torch.tensor([0.9, 0.8]),
        objectness=torch.tensor([0.95, 0.9]),
    )
    m0 = torch.full((4, 4, 8), 0.9)
    m0[..., 6:] = 0.6  # x in [6, 8): claimed, but barely
    m1 = torch.full((4, 4, 8), 0.95)  # RoI resolution; resampled to its 6-voxel box
    inst.pred_masks = torch.stack([m0, m1])
    for owner, split in (("mask_prob", 6), ("first", 8)):
        labels = instances_to_label_volume(inst, shape, 0.5, voxel_owner=owner)
        assert (labels[..., :split] == 1).all() and (labels[..., split:] == 2).all(), owner
    # equal probabilities keep the earlier instance, as "first" does
    inst.pred_masks = torch.ones(2, 4, 4, 8)
    labels = instances_to_label_volume(inst, shape, 0.5)
    assert (labels[..., :8] == 1).all() and (labels[..., 8:] == 2).all()
    with pytest.raises(ValueError, match="LABELS_VOXEL_OWNER"):
        instances_to_label_volume(inst, shape, 0.5, voxel_owner="biggest")


def test_foreground_sets_where_objects_end():
    # One row of 12 voxels: row 0 (surer) has box x in [0, 8), row 1 x in [4, 12), masks at the
    # boxes' size (pasted as they are). The foreground says no at x = 3 and x = 11. With it, each
    # instance claims foreground voxels down to mask probability 0.2, a voxel two claim goes to
    # the higher probability, and the overlap rule looks at the masks' own voxels (>= 0.5).
    shape = (1, 12)
    inst = Instances(
        shape,
        pred_boxes=Boxes(torch.tensor([[0.0, 0, 8, 1], [4.0, 0, 12, 1]])),
        scores=torch.tensor([0.9, 0.8]),
        objectness=torch.tensor([0.95, 0.9]),
    )
    inst.pred_masks = torch.tensor(
        [
            [[0.9, 0.9, 0.9, 0.6, 0.3, 0.1, 0.0, 0.0]],  # x = 0..7
            [[0.25, 0.4, 0.9, 0.9, 0.9, 0.9, 0.9, 0.3]],  # x = 4..11
        ]
    )
    fg = torch.ones(shape)
    fg[0, 3] = fg[0, 11] = 0.1
    plain = instances_to_label_volume(inst, shape, 0.5)
    assert plain.tolist() == [[1, 1, 1, 1, 0, 0, 2, 2, 2, 2, 2, 0]]
    low = instances_to_label_volume(inst, shape, 0.5, claim_threshold=0.2)
    assert low.tolist() == [[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]]  # x = 4: 0.3 beats 0.25
    got = instances_to_label_volume(inst, shape, 0.5, foreground=fg, claim_threshold=0.2)
    assert got.tolist() == [[1, 1, 1, 0, 1, 2, 2, 2, 2, 2, 2, 0]]
    # a second detection of row 1 (same mask, less sure) is a duplicate by its own voxels
    dup = Instances.cat([inst, inst[[1]]])
    dup.objectness = torch.tensor([0.95, 0.9, 0.8])
    got = instances_to_label_volume(dup, shape, 0.5, foreground=fg, claim_threshold=0.2)
    assert got.tolist() == [[1, 1, 1, 0, 1, 2, 2, 2, 2, 2, 2, 0]]
    with pytest.raises(ValueError, match="foreground"):
        instances_to_label_volume(inst, shape, foreground=fg[:, :-1])
    # Row 0's claim reaches, at probability 0.3, over most of row 1's mask. Those outskirts do
    # not make row 1 a duplicate (it would be one if 6 of its 8 voxels counted as taken), and
    # row 1, surer there, takes them.
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0, 8, 1], [2.0, 0, 10, 1]]))
    inst.pred_masks = torch.tensor([[[0.9, 0.9] + [0.3] * 6], [[0.9] * 8]])
    got = instances_to_label_volume(inst, shape, 0.5, claim_threshold=0.2)
    assert got.tolist() == [[1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0]]
