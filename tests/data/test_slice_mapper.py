"""
SliceDatasetMapper: windows and targets against the volume they were cut from, whole-volume
normalisation, empty-slice sampling, sparse (per-slice) ground truth, batches, errors.
"""

import numpy as np
import pytest
import torch

import det3d.data.detection_utils as detection_utils
from det3d.config import get_cfg
from det3d.data import (
    DatasetCatalog,
    DatasetMapper3D,
    SliceDatasetMapper,
    build_detection_train_loader,
    make_synthetic_volume,
    write_volume,
)

from . import keep_raw_values


def _record(tmp_path, name, image, labels, **extra):
    img_path, lab_path = str(tmp_path / f"{name}.tif"), str(tmp_path / f"{name}_labels.tif")
    write_volume(img_path, image)
    write_volume(lab_path, labels)
    d, h, w = labels.shape
    return dict(
        file_name=img_path,
        image_id=name,
        depth=d,
        height=h,
        width=w,
        spacing=(2.0, 0.5, 0.5),
        instance_label_file=lab_path,
        **extra,
    )


def _cfg(augment=False, **slice_fusion):
    cfg = get_cfg()
    cfg.DATALOADER.TRAIN_MAPPER = "SliceDatasetMapper"
    for k, v in slice_fusion.items():
        cfg.MODEL.SLICE_FUSION[k] = v
    if not augment:
        keep_raw_values(cfg, flips=False)  # the image (= labels) stays checkable
    return cfg


@pytest.fixture
def volume(tmp_path):
    _, labels, cls = make_synthetic_volume(
        (10, 24, 24), 5, size_range=(1.5, 3.0), touching=True, spacing=(1, 0.5, 0.5), seed=4
    )
    record = _record(tmp_path, "vol", labels.astype(np.float32)[None], labels, instance_classes=cls)
    return record, labels, cls


@pytest.mark.parametrize("pad_mode", ["replicate", "reflect", "zeros"])
def test_window_and_targets_are_cut_from_the_volume(volume, pad_mode):
    record, labels, cls = volume
    mapper = SliceDatasetMapper(_cfg(NUM_SLICES=5, PAD_MODE=pad_mode, EMPTY_SLICE_WEIGHT=1.0))
    seen = set()
    for seed in range(12):
        mapper.reseed(seed)
        out = mapper(record)
        z = out["slice_index"]
        seen.add(z)
        image = out["image"].numpy()
        assert image.shape == (1, 5, 24, 24)
        for s, i in enumerate(range(z - 2, z + 3)):  # the reference window, written out
            if 0 <= i < 10:
                ref = labels[i]
            elif pad_mode == "replicate":
                ref = labels[min(max(i, 0), 9)]
            elif pad_mode == "reflect":
                ref = labels[-i if i < 0 else 18 - i]
            else:
                ref = np.zeros_like(labels[0])
            assert np.array_equal(image[0, s], ref), (z, s)
        inst = out["instances"]
        ids = [i for i in np.unique(labels[z]) if i]
        assert inst.image_size == (24, 24) and len(inst) == len(ids)
        for k, i in enumerate(ids):
            assert torch.equal(inst.gt_masks.tensor[k], torch.from_numpy(labels[z] == i))
            assert int(inst.gt_classes[k]) == cls[i]
            ys, xs = np.nonzero(labels[z] == i)
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert inst.gt_boxes.tensor[k].tolist() == box
    assert {0, 9} & seen or len(seen) > 4  # the draw covers the volume


def test_normalised_with_the_whole_volumes_percentiles(volume):
    record, labels, _ = volume
    cfg = _cfg()
    cfg.INPUT.NORM_PERCENTILES = [1.0, 99.8]
    whole = DatasetMapper3D(cfg, False)(record)["image"]
    mapper = SliceDatasetMapper(cfg)
    out = mapper(record)
    z = out["slice_index"]
    assert torch.allclose(out["image"][:, 1], whole[:, z])


def test_only_the_window_is_read(volume, monkeypatch):
    def whole_volume(*args, **kwargs):
        raise AssertionError("the mapper read the whole label volume")

    monkeypatch.setattr(detection_utils, "load_record_labels", whole_volume)
    record, _, _ = volume
    SliceDatasetMapper(_cfg())(record)


def test_empty_slices_weighted_by_empty_slice_weight(tmp_path):
    labels = np.zeros((12, 16, 16), np.int32)
    labels[5:7, 4:9, 4:9] = 1  # only 2 of 12 slices hold an object
    record = _record(tmp_path, "sparse", labels.astype(np.float32)[None], labels)
    mapper = SliceDatasetMapper(_cfg(EMPTY_SLICE_WEIGHT=0.0))
    slices = []
    for seed in range(30):
        mapper.reseed(seed)
        slices.append(mapper(record)["slice_index"])
    assert set(slices) <= {5, 6}
    mapper = SliceDatasetMapper(_cfg(EMPTY_SLICE_WEIGHT=1.0))
    slices = []
    for seed in range(60):
        mapper.reseed(seed)
        slices.append(mapper(record)["slice_index"])
    assert len(set(slices)) > 6  # uniform over all 12


def test_sparse_ground_truth_trains_on_its_annotated_slices(tmp_path, volume):
    _, labels, _ = volume
    image_path = str(tmp_path / "ctc.tif")
    write_volume(image_path, labels.astype(np.float32)[None])
    files = []
    for z in (3, 7):
        files.append(str(tmp_path / f"man_seg_000_{z:03d}.tif"))
        write_volume(files[-1], labels[z])
    record = dict(
        file_name=image_path,
        image_id=0,
        depth=10,
        height=24,
        width=24,
        seg_slices=[3, 7],
        seg_slice_files=files,
    )
    mapper = SliceDatasetMapper(_cfg(EMPTY_SLICE_WEIGHT=1.0))
    for seed in range(8):
        mapper.reseed(seed)
        out = mapper(record)
        z = out["slice_index"]
        assert z in (3, 7)
        assert len(out["instances"]) == len([i for i in np.unique(labels[z]) if i])
    # the training loader keeps such records for this mapper (DatasetMapper3D drops them)
    DatasetCatalog.register("slice_mapper_sparse_test", lambda: [record])
    try:
        cfg = _cfg()
        cfg.DATASETS.TRAIN = ("slice_mapper_sparse_test",)
        cfg.SOLVER.IMS_PER_BATCH = 3
        cfg.DATALOADER.NUM_WORKERS = 0
        cfg.SEED = 1
        batch = next(iter(build_detection_train_loader(cfg)))
        assert len(batch) == 3 and all(b["image"].shape == (1, 3, 24, 24) for b in batch)
        cfg.DATALOADER.TRAIN_MAPPER = "DatasetMapper3D"
        with pytest.raises(ValueError, match="No volume"):
            build_detection_train_loader(cfg)
    finally:
        DatasetCatalog.remove("slice_mapper_sparse_test")


def test_augmented_windows_stay_aligned_with_their_targets(volume):
    record, _, _ = volume
    cfg = _cfg(NUM_SLICES=3)
    cfg.INPUT.RANDOM_FLIP_AXES = [0, 1, 2]
    cfg.INPUT.ROTATE90_XY = True
    cfg.INPUT.CROP_SIZE = [16, 16]
    mapper = SliceDatasetMapper(cfg)
    for seed in range(10):
        mapper.reseed(seed)
        out = mapper(record)
        centre = out["image"][0, 1]
        assert centre.shape == (16, 16)
        masks = out["instances"].gt_masks.tensor
        # the image holds the label ids, so every target mask sits on its own id's voxels
        for m in masks:
            assert m.any() and len(torch.unique(centre[m])) == 1 and centre[m][0] > 0


def test_errors_name_the_file_and_key(tmp_path):
    labels = np.zeros((2, 8, 8), np.int32)
    labels[:, 2:5, 2:5] = 1
    thin = _record(tmp_path, "thin", labels.astype(np.float32)[None], labels)
    with pytest.raises(ValueError, match=r"thin.tif.*2 slices.*NUM_SLICES=3"):
        SliceDatasetMapper(_cfg())(thin)
    flat = _record(tmp_path, "flat", labels[:1].astype(np.float32), labels[:1])
    with pytest.raises(ValueError, match=r"flat.tif: a 2D image.*NUM_SLICES=3"):
        SliceDatasetMapper(_cfg())(flat)
    with pytest.raises(ValueError, match="DatasetMapper3D"):
        SliceDatasetMapper(_cfg(), False)
    cfg = _cfg()
    cfg.INPUT.TARGET_SPACING = [1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="INPUT.TARGET_SPACING"):
        SliceDatasetMapper(cfg)
    cfg = _cfg()
    cfg.INPUT.COPY_PASTE.NUM_TOUCHING = 2
    with pytest.raises(ValueError, match="INPUT.COPY_PASTE.NUM_TOUCHING"):
        SliceDatasetMapper(cfg)
    cfg = _cfg()
    cfg.INPUT.RANDOM_SCALE.RANGE = [0.8, 1.25]
    with pytest.raises(ValueError, match="INPUT.RANDOM_SCALE"):
        SliceDatasetMapper(cfg)
    with pytest.raises(ValueError, match="MODEL.SLICE_FUSION.NUM_SLICES"):
        SliceDatasetMapper(_cfg(NUM_SLICES=4))


def test_zarr_volumes_are_read_slice_by_slice(tmp_path, volume, monkeypatch):
    zarr = pytest.importorskip("zarr")
    from det3d.data.io import LazyVolume

    record, labels, _ = volume
    for key, array in (("file_name", labels.astype(np.float32)), ("instance_label_file", labels)):
        path = str(tmp_path / f"{key}.zarr")
        z = zarr.open_array(
            path, mode="w", shape=array.shape, dtype=array.dtype, chunks=(1, 24, 24)
        )
        z[:] = array
        record = dict(record, **{key: path})
    reads = []
    getitem = LazyVolume.__getitem__

    def counting(self, key):
        out = getitem(self, key)
        reads.append(out.shape)
        return out

    monkeypatch.setattr(LazyVolume, "__getitem__", counting)
    mapper = SliceDatasetMapper(_cfg(NUM_SLICES=3))
    mapper(record)
    reads.clear()
    out = mapper(record)
    assert all(shape[1] == 1 for shape in reads), reads  # one slice at a time, never the volume
    z = out["slice_index"]
    assert np.array_equal(out["image"][0, 1].numpy(), labels[z])
