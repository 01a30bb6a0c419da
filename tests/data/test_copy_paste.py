"""Touching copy-paste (det3d.data.transforms.copy_paste) and its use by the training mapper."""

import numpy as np
import pytest

from det3d.config import get_cfg
from det3d.data import DatasetMapper3D, write_volume
from det3d.data.transforms import paste_touching_copies
from det3d.evaluation.overlap import touching_objects


def _two_objects():
    """A (1, 24, 32, 32) image whose every voxel is distinct, and two separate boxes."""
    labels = np.zeros((24, 32, 32), np.int32)
    labels[8:14, 6:12, 6:14] = 1
    labels[10:16, 18:26, 18:24] = 2
    image = np.arange(labels.size, dtype=np.float32).reshape((1,) + labels.shape)
    return image, labels, {1: 0, 2: 1}


def _copies(labels_before, labels_after):
    return [i for i in np.unique(labels_after) if i > labels_before.max()]


def test_copies_touch_overlap_nothing_and_carry_the_source():
    image, labels, classes = _two_objects()
    before = (image.copy(), labels.copy(), dict(classes))
    out_img, out_lab, out_cls, n = paste_touching_copies(
        image, labels, classes, np.random.default_rng(0), 3, ring=1
    )
    # the inputs are untouched
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(labels, before[1])
    assert classes == before[2]
    new = _copies(labels, out_lab)
    assert n == len(new) == 3
    # the objects that were there keep every voxel, in the labels and in the image
    np.testing.assert_array_equal(out_lab[labels > 0], labels[labels > 0])
    np.testing.assert_array_equal(out_img[0][labels > 0], image[0][labels > 0])
    touching = set(touching_objects(out_lab).tolist())
    by_values = {float(v): k for k, v in np.ndenumerate(image[0])}  # voxel value -> position
    for c in new:
        copy = out_lab == c
        assert c in touching  # each copy shares a face with an object
        # a translated source: its image values are the source's voxels, shifted by one offset
        positions = np.array([by_values[float(v)] for v in out_img[0][copy]])
        shifts = np.unique(positions - np.argwhere(copy), axis=0)
        assert len(shifts) == 1
        src = labels[tuple(positions.T)]
        assert len(np.unique(src)) == 1 and src[0] in (1, 2)
        assert copy.sum() == (labels == src[0]).sum()
        assert out_cls[c] == classes[int(src[0])]


def test_copies_lie_on_top_while_each_covered_object_keeps_its_share():
    image, labels, classes = _two_objects()
    sizes = np.bincount(labels.ravel())
    covered_any = False
    for seed in range(6):
        out_img, out_lab, _, n = paste_touching_copies(
            image, labels, classes, np.random.default_rng(seed), 3, ring=0, min_keep=0.5
        )
        assert n == 3
        left = np.bincount(out_lab.ravel(), minlength=sizes.size)[: sizes.size]
        assert (left[1:] >= 0.5 * sizes[1:]).all()  # covered, never below half
        covered_any |= bool((left[1:] < sizes[1:]).any())
        for c in _copies(labels, out_lab):
            copy = out_lab == c
            # at most as many voxels as its source, with its voxels' values
            assert copy.sum() <= sizes[1:].max()
            assert np.isin(out_img[0][copy], image[0][labels > 0]).all()
        # where a copy covers an object, the image shows the copy (the later one wins)
        under = (labels > 0) & (out_lab != labels)
        np.testing.assert_array_equal(under, (out_img[0] != image[0]) & (labels > 0))
    assert covered_any
    with pytest.raises(ValueError, match="min_keep"):
        paste_touching_copies(image, labels, classes, np.random.default_rng(0), 1, min_keep=0.3)


def test_the_ring_comes_from_the_source_background():
    image, labels, classes = _two_objects()
    out_img, out_lab, _, n = paste_touching_copies(
        image, labels, classes, np.random.default_rng(1), 1, ring=2
    )
    assert n == 1
    changed = out_img[0] != image[0]
    copy = out_lab == _copies(labels, out_lab)[0]
    ring = changed & ~copy
    assert ring.any() and (out_lab[ring] == 0).all()  # background voxels only
    # within 2 face steps of the copy
    from scipy import ndimage

    near = ndimage.binary_dilation(copy, ndimage.generate_binary_structure(3, 1), iterations=2)
    assert not (changed & ~near).any()
    # ring=0: only the object's voxels change
    out_img, out_lab, _, _ = paste_touching_copies(
        image, labels, classes, np.random.default_rng(1), 1, ring=0
    )
    np.testing.assert_array_equal(out_img[0] != image[0], out_lab != labels)


def test_same_draws_same_copies_and_no_room_no_copy():
    image, labels, classes = _two_objects()
    a = paste_touching_copies(image, labels, classes, np.random.default_rng(5), 2)
    b = paste_touching_copies(image, labels, classes, np.random.default_rng(5), 2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    # objects that reach the border are not copied (a crop's remnant is not a shape)
    edge = np.zeros_like(labels)
    edge[0:5, 0:6, 0:6] = 1
    img, lab, cls, n = paste_touching_copies(image, edge, {1: 0}, np.random.default_rng(0), 2)
    assert n == 0 and lab is edge and img is image and cls == {1: 0}
    # nothing to copy in an empty volume, and num_copies 0 does nothing
    assert paste_touching_copies(image, edge * 0, {}, np.random.default_rng(0), 2)[3] == 0
    assert paste_touching_copies(image, labels, classes, np.random.default_rng(0), 0)[3] == 0


def test_bad_arguments_are_named():
    image, labels, classes = _two_objects()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="num_copies"):
        paste_touching_copies(image, labels, classes, rng, -1)
    with pytest.raises(ValueError, match="ring"):
        paste_touching_copies(image, labels, classes, rng, 1, ring=-2)
    with pytest.raises(ValueError, match="differ in shape"):
        paste_touching_copies(image[:, :-1], labels, classes, rng, 1)


def _record(tmp_path, image, labels, classes):
    write_volume(str(tmp_path / "img.tif"), image)
    write_volume(str(tmp_path / "lab.tif"), labels)
    d, h, w = labels.shape
    return dict(
        file_name=str(tmp_path / "img.tif"),
        image_id="v",
        depth=d,
        height=h,
        width=w,
        instance_label_file=str(tmp_path / "lab.tif"),
        instance_classes=classes,
    )


def test_training_mapper_pastes_touching_copies(tmp_path):
    image, labels, classes = _two_objects()
    rec = _record(tmp_path, image[0], labels, classes)
    cfg = get_cfg()
    cfg.INPUT.RANDOM_FLIP_AXES = []
    cfg.INPUT.ROTATE90_XY = False
    plain = DatasetMapper3D(cfg, True)(rec)["instances"]
    assert len(plain) == 2
    cfg.INPUT.COPY_PASTE.NUM_TOUCHING = 2
    inst = DatasetMapper3D(cfg, True)(rec)["instances"]
    assert len(inst) == 4
    masks = inst.gt_masks.tensor.numpy()
    lab = np.zeros(labels.shape, np.int32)
    for k, m in enumerate(masks):
        assert not (lab[m] > 0).any()  # disjoint
        lab[m] = k + 1
    assert set(touching_objects(lab).tolist()) >= {3, 4}
    # classes follow the sources; boxes are tight around the masks
    assert set(inst.gt_classes.tolist()) <= {0, 1}
    for m, b in zip(masks, inst.gt_boxes.tensor.numpy()):
        z, y, x = np.nonzero(m)
        np.testing.assert_array_equal(
            b, [x.min(), y.min(), z.min(), x.max() + 1, y.max() + 1, z.max() + 1]
        )
    # the test mapper never pastes
    assert "instances" not in DatasetMapper3D(cfg, False)(rec)
    cfg.INPUT.COPY_PASTE.MIN_KEEP = 0.2
    with pytest.raises(ValueError, match="INPUT.COPY_PASTE.MIN_KEEP"):
        DatasetMapper3D(cfg, True)
    cfg.INPUT.COPY_PASTE.MIN_KEEP = 1.0
    cfg.INPUT.COPY_PASTE.NUM_TOUCHING = -1
    with pytest.raises(ValueError, match="INPUT.COPY_PASTE.NUM_TOUCHING"):
        DatasetMapper3D(cfg, True)
