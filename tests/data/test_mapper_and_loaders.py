import numpy as np
import pytest
import torch

from det3d.config import get_cfg
from det3d.data import (
    DatasetCatalog,
    DatasetMapper3D,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    make_synthetic_volume,
    write_volume,
)
from det3d.data.samplers import InferenceSampler, TrainingSampler

from . import keep_raw_values, register_records


def _record(tmp_path, name, image, labels, spacing=(1.0, 1.0, 1.0), **extra):
    img_path, lab_path = str(tmp_path / f"{name}.tif"), str(tmp_path / f"{name}_labels.tif")
    write_volume(img_path, image)
    write_volume(lab_path, labels)
    d, h, w = labels.shape[-3:] if labels.ndim == 3 else (1,) + labels.shape
    return dict(
        file_name=img_path,
        image_id=name,
        depth=d,
        height=h,
        width=w,
        spacing=spacing,
        instance_label_file=lab_path,
        **extra,
    )


def _geometric_cfg(crop=(8, 16, 16)):
    cfg = keep_raw_values(get_cfg())  # image == labels stays checkable
    cfg.INPUT.CROP_SIZE = list(crop)
    return cfg


@pytest.fixture
def touching_record(tmp_path):
    _, labels, cls = make_synthetic_volume(
        (12, 24, 24), 6, size_range=(2.5, 4.0), touching=True, seed=2
    )
    return _record(tmp_path, "vol", labels.astype(np.float32), labels, instance_classes=cls), labels


def test_train_mapper_aligned_tight_and_drops_remnants(touching_record):
    record, labels = touching_record
    full = np.bincount(labels.ravel())
    cfg = _geometric_cfg()
    cfg.INPUT.CROP_MIN_VISIBLE_FRACTION = 0.3
    cfg.INPUT.MIN_INSTANCE_VOXELS = 10
    mapper = DatasetMapper3D(cfg, is_train=True)
    dropped_seen = 0
    for seed in range(12):
        mapper.reseed(seed)
        out = mapper(record)
        image, inst = out["image"], out["instances"]
        assert image.shape == (1, 8, 16, 16) and image.dtype == torch.float32
        assert inst.image_size == (8, 16, 16)
        assert (out["depth"], out["height"], out["width"]) == (12, 24, 24)
        masks = inst.gt_masks.tensor
        assert masks.dtype == torch.bool and masks.shape[1:] == (8, 16, 16)
        assert inst.gt_classes.dtype == torch.int64
        kept_ids = set()
        for k in range(len(inst)):
            vals = image[0][masks[k]].unique()
            assert len(vals) == 1  # a mask covers exactly one original instance
            i = int(vals[0])
            kept_ids.add(i)
            visible = int(masks[k].sum())
            assert visible == full[i] or (visible >= 0.3 * full[i] and visible >= 10)
            assert int(inst.gt_classes[k]) == record["instance_classes"][i]
            # box is tight around the mask
            nz = torch.nonzero(masks[k])
            lo, hi = nz.min(0).values.flip(0), nz.max(0).values.flip(0) + 1
            torch.testing.assert_close(inst.gt_boxes.tensor[k], torch.cat([lo, hi]).float())
        for i in set(int(v) for v in image.unique()) - {0} - kept_ids:
            visible = int((image[0] == i).sum())  # image kept, instance dropped from targets
            assert visible < 0.3 * full[i] or visible < 10
            dropped_seen += 1
    assert dropped_seen > 0


def test_test_mapper_and_resampling(touching_record):
    record, labels = touching_record
    cfg = get_cfg()
    out = DatasetMapper3D(cfg, is_train=False)(record)
    assert out["image"].shape == (1, 12, 24, 24) and "instances" not in out
    assert 0.0 <= float(out["image"].median()) <= 1.0
    cfg.INPUT.TARGET_SPACING = [0.5, 2.0, 2.0]
    out = DatasetMapper3D(cfg, is_train=True)(record)
    assert out["image"].shape == (1, 24, 12, 12)
    assert (out["depth"], out["height"], out["width"]) == (12, 24, 24)  # original size
    assert out["spacing"] == (0.5, 2.0, 2.0)
    assert out["instances"].gt_masks.tensor.shape[1:] == (24, 12, 12)


def test_mapper_2d(tmp_path):
    labels = np.zeros((16, 16), np.int32)
    labels[2:6, 3:9] = 1
    labels[10:14, 10:12] = 2
    rec = _record(tmp_path, "img2d", labels.astype(np.float32), labels)
    cfg = _geometric_cfg(crop=())
    cfg.MODEL.SPATIAL_DIMS = 2
    cfg.INPUT.RANDOM_FLIP_AXES = []
    cfg.INPUT.ROTATE90_XY = False
    out = DatasetMapper3D(cfg, is_train=True)(rec)
    assert out["image"].shape == (1, 16, 16) and "depth" not in out
    boxes = out["instances"].gt_boxes.tensor
    assert boxes.shape == (2, 4)
    assert sorted(boxes.tolist()) == sorted([[3.0, 2.0, 9.0, 6.0], [10.0, 10.0, 12.0, 14.0]])


def test_mapper_errors_name_the_file(tmp_path):
    img = np.ones((4, 8, 8), np.float32)
    img[1, 2, 3] = np.nan
    labels = np.zeros((4, 8, 8), np.int32)
    labels[1:3, 2:5, 2:5] = 1
    rec = _record(tmp_path, "nan_vol", img, labels)
    with pytest.raises(ValueError, match="nan_vol.tif.*NaN"):
        DatasetMapper3D(get_cfg(), is_train=False)(rec)
    rec = _record(tmp_path, "ok_vol", np.ones((4, 8, 8), np.float32), labels)
    write_volume(rec["instance_label_file"], np.zeros((4, 8, 7), np.int32))
    with pytest.raises(ValueError, match="ok_vol_labels.tif"):
        DatasetMapper3D(get_cfg(), is_train=True)(rec)
    write_volume(rec["instance_label_file"], np.full((4, 8, 8), 0.5, np.float32))
    with pytest.raises(ValueError, match="ok_vol_labels.tif"):
        DatasetMapper3D(get_cfg(), is_train=True)(rec)
    rec["file_name"] = str(tmp_path / "gone.tif")
    with pytest.raises(FileNotFoundError, match="gone.tif"):
        DatasetMapper3D(get_cfg(), is_train=False)(rec)
    sparse = dict(rec, instance_label_file=None, seg_slices=[1], seg_slice_files=["x.tif"])
    sparse["file_name"] = str(tmp_path / "ok_vol.tif")
    with pytest.raises(ValueError, match="ok_vol.tif.*slices"):
        DatasetMapper3D(get_cfg(), is_train=True)(sparse)


def test_filter_empty(tmp_path, touching_record, caplog):
    record, labels = touching_record
    empty = _record(
        tmp_path, "empty", np.ones((12, 24, 24), np.float32), np.zeros((12, 24, 24), np.int32)
    )
    register_records("_test_mixed", [record, empty])
    register_records("_test_empty", [empty])
    try:
        assert len(get_detection_dataset_dicts("_test_mixed")) == 1
        assert len(get_detection_dataset_dicts("_test_mixed", filter_empty=False)) == 2
        with pytest.raises(ValueError, match="empty_labels.tif"):
            get_detection_dataset_dicts(["_test_empty"])
        with pytest.raises(KeyError, match="_test_nope"):
            get_detection_dataset_dicts(["_test_nope"])
    finally:
        DatasetCatalog.remove("_test_mixed")
        DatasetCatalog.remove("_test_empty")


def _batches(cfg, n):
    it = iter(build_detection_train_loader(cfg))
    return [next(it) for _ in range(n)]


def test_same_seed_same_batches(tmp_path):
    recs = []
    for i in range(3):
        im, lab, _ = make_synthetic_volume((8, 20, 20), 3, size_range=(2.0, 3.0), seed=i)
        recs.append(_record(tmp_path, f"v{i}", im, lab))
    register_records("_test_seeded", recs)
    try:
        cfg = get_cfg()
        cfg.DATASETS.TRAIN = ("_test_seeded",)
        cfg.INPUT.CROP_SIZE = [6, 12, 12]
        cfg.SOLVER.IMS_PER_BATCH = 2
        cfg.DATALOADER.NUM_WORKERS = 0
        cfg.SEED = 7
        a, b = _batches(cfg, 3), _batches(cfg, 3)
        cfg.DATALOADER.NUM_WORKERS = 1
        c = _batches(cfg, 3)
        cfg.SEED, cfg.DATALOADER.NUM_WORKERS = 8, 0
        d = _batches(cfg, 3)
        for x, y, z in zip(a, b, c):
            assert len(x) == 2 and isinstance(x, list)
            for u, v, w in zip(x, y, z):
                assert u["file_name"] == v["file_name"] == w["file_name"]
                assert torch.equal(u["image"], v["image"]) and torch.equal(u["image"], w["image"])
                assert torch.equal(u["instances"].gt_boxes.tensor, v["instances"].gt_boxes.tensor)
        assert any(
            not torch.equal(u["image"], v["image"]) for x, y in zip(a, d) for u, v in zip(x, y)
        )

        loader = build_detection_test_loader(cfg, "_test_seeded")
        names = [batch[0]["file_name"] for batch in loader]
        assert names == [r["file_name"] for r in recs]
    finally:
        DatasetCatalog.remove("_test_seeded")


def test_samplers_shard():
    s = [list(InferenceSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert sum(s, []) == list(range(10))
    streams = [TrainingSampler(5, seed=3, rank=r, world_size=2) for r in range(2)]
    firsts = [[next(iter(st)) for _ in range(1)] for st in streams]
    it0, it1 = iter(streams[0]), iter(streams[1])
    p0 = [next(it0) for _ in range(5)]
    p1 = [next(it1) for _ in range(5)]
    assert [p for p, _ in p0] == [0, 2, 4, 6, 8] and [p for p, _ in p1] == [1, 3, 5, 7, 9]
    merged = sorted(p0 + p1)
    assert sorted(i for _, i in merged[:5]) == list(range(5))  # one full permutation first
    assert firsts[0][0] == p0[0]


def test_crop_size_is_a_per_axis_value():
    assert DatasetMapper3D(True, crop_size=16).crop_size == (16, 16, 16)
    assert DatasetMapper3D(True, crop_size=[8, 16, 16], spatial_dims=2).crop_size == (16, 16)
    assert DatasetMapper3D(True, crop_size=[]).crop_size == ()
    with pytest.raises(ValueError, match=r"crop_size.*length 2, expected 3"):
        DatasetMapper3D(True, crop_size=[16, 16])


@pytest.fixture
def cube_record(tmp_path):
    labels = np.zeros((24, 24, 24), np.int32)
    labels[8:16, 8:16, 8:16] = 1
    return _record(tmp_path, "cube", labels.astype(np.float32), labels)


@pytest.mark.parametrize(
    "factor, crop, side, shape",
    [
        (1.5, [], 12, (24, 24, 24)),  # zoomed to 36^3, cropped back: the cube always inside
        (0.5, [], 4, (24, 24, 24)),  # zoomed to 12^3, padded back
        (1.5, [30, 30, 30], 12, (30, 30, 30)),  # the crop of a zoomed volume
    ],
)
def test_train_mapper_random_scale(cube_record, factor, crop, side, shape):
    cfg = keep_raw_values(get_cfg(), flips=False)
    cfg.INPUT.CROP_SIZE = crop
    cfg.INPUT.RANDOM_SCALE.RANGE = [factor, factor]
    cfg.INPUT.RANDOM_SCALE.PROB = 1.0
    mapper = DatasetMapper3D(cfg, is_train=True)
    for seed in range(6):
        mapper.reseed(seed)
        out = mapper(cube_record)
        assert tuple(out["image"].shape[1:]) == shape
        inst = out["instances"]
        assert len(inst) == 1 and int(inst.gt_masks.tensor.sum()) == side**3
        box = inst.gt_boxes.tensor[0]
        assert (box[3:] - box[:3]).tolist() == [side] * 3
        assert (out["depth"], out["height"], out["width"]) == (24, 24, 24)  # the record's
        if factor < 1:  # padding is image 0, labels 0
            assert int((out["image"] > 0).sum()) == side**3


def test_train_mapper_random_scale_errors_name_the_key(cube_record):
    cfg = get_cfg()
    cfg.INPUT.RANDOM_SCALE.RANGE = [1.25, 0.8]
    with pytest.raises(ValueError, match=r"INPUT\.RANDOM_SCALE\.RANGE"):
        DatasetMapper3D(cfg, is_train=True)
    cfg.INPUT.RANDOM_SCALE.RANGE = [0.8, 1.25]
    cfg.INPUT.RANDOM_SCALE.PROB = 2.0
    with pytest.raises(ValueError, match=r"INPUT\.RANDOM_SCALE\.PROB"):
        DatasetMapper3D(cfg, is_train=True)
