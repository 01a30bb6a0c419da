import numpy as np
import pytest
import torch

from det3d.config import get_cfg
from det3d.data import DatasetCatalog, DatasetMapper3D, build_detection_train_loader, write_volume
from det3d.data.samplers import TrainingSampler
from det3d.data.transforms import check_mosaic, join_volumes

from . import keep_raw_values, register_records


def test_join_volumes_places_pads_and_renumbers():
    a_lab = np.zeros((2, 3, 4), np.int32)
    a_lab[0, 0, :2] = 1
    a_lab[1, 2, 3] = 2
    b_lab = np.zeros((2, 2, 5), np.int32)
    b_lab[1, 1, 1:4] = 1
    a_img = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4) + 1
    b_img = -np.arange(20, dtype=np.float32).reshape(1, 2, 2, 5) - 1
    image, labels, classes = join_volumes([a_img, b_img], [a_lab, b_lab], [{1: 0, 2: 2}, {1: 1}], 1)
    # along axis 1 (H): 3 + 2; the other axes padded to the larger, at the end
    assert image.shape == (1, 2, 5, 5) and labels.shape == (2, 5, 5)
    want_img = np.zeros((1, 2, 5, 5), np.float32)
    want_img[:, :, :3, :4] = a_img
    want_img[:, :, 3:, :5] = b_img
    np.testing.assert_array_equal(image, want_img)
    want_lab = np.zeros((2, 5, 5), np.int32)
    want_lab[:, :3, :4] = a_lab
    want_lab[:, 3:, :5] = np.where(b_lab > 0, b_lab + 2, 0)
    np.testing.assert_array_equal(labels, want_lab)
    assert classes == {1: 0, 2: 2, 3: 1}
    with pytest.raises(ValueError, match="axis 3"):
        join_volumes([a_img], [a_lab], [{}], 3)
    with pytest.raises(ValueError, match="one of each"):
        join_volumes([a_img, b_img], [a_lab], [{}], 0)


@pytest.mark.parametrize(
    "num, axes, match",
    [
        (0, [0], "NUM_VOLUMES must be an int >= 1"),
        (2.0, [0], "NUM_VOLUMES must be an int >= 1"),
        (2, [0, 0], "AXES must list"),
        (2, [3], "AXES must list distinct spatial axes in 0..2"),
    ],
)
def test_check_mosaic_names_the_key(num, axes, match):
    with pytest.raises(ValueError, match=match):
        check_mosaic(num, axes, 3, names=("INPUT.MOSAIC.NUM_VOLUMES", "INPUT.MOSAIC.AXES"))


def _records(tmp_path, shapes, spacings=None):
    records = []
    for i, shape in enumerate(shapes):
        labels = np.zeros(shape, np.int32)
        labels[1:3, 1:4, 2:5] = 1
        labels[-3:-1, -4:-1, -4:-2] = 2
        # a distinct image per volume (its labels scaled and offset by its index)
        image = (labels * 10 + 100 * (i + 1)).astype(np.float32)
        img, lab = str(tmp_path / f"m{i}.tif"), str(tmp_path / f"m{i}_labels.tif")
        write_volume(img, image)
        write_volume(lab, labels)
        d, h, w = shape
        spacing = spacings[i] if spacings else (1.0, 1.0, 1.0)
        records.append(
            dict(file_name=img, image_id=i, depth=d, height=h, width=w, spacing=spacing,
                 instance_label_file=lab, instance_classes={1: 0, 2: 0})
        )  # fmt: skip
    return records


def _mosaic_cfg(name):
    cfg = keep_raw_values(get_cfg(), flips=False)  # each voxel says which volume it came from
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.MOSAIC.NUM_VOLUMES = 2
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 3
    return cfg


def test_train_loader_joins_consecutive_records_of_the_sampler(tmp_path):
    records = _records(tmp_path, [(6, 8, 10)] * 3)
    register_records("_test_mosaic", records)
    try:
        cfg = _mosaic_cfg("_test_mosaic")
        it = iter(build_detection_train_loader(cfg))
        batches = [next(it) for _ in range(4)]
        again = iter(build_detection_train_loader(cfg))
        order = [idx for _, (_, idx) in zip(range(8), TrainingSampler(3, seed=3)._infinite())]
        axes = set()
        for k, batch in enumerate(batches):
            assert len(batch) == 1
            out = batch[0]
            first, second = records[order[2 * k]], records[order[2 * k + 1]]
            assert out["mosaic"] == [first["file_name"], second["file_name"]]
            image = out["image"][0].numpy()
            axis = [a for a in range(3) if image.shape[a] == 2 * (6, 8, 10)[a]]
            assert len(axis) == 1 and image.shape == tuple(
                2 * n if a == axis[0] else n for a, n in enumerate((6, 8, 10))
            )
            axes.add(axis[0])
            assert (out["depth"], out["height"], out["width"]) == image.shape
            # each half is its record's volume: 100 * (index + 1) outside its objects
            halves = np.split(image, 2, axis=axis[0])
            for half, rec in zip(halves, (first, second)):
                assert half.min() == 100 * (rec["image_id"] + 1)
            # two objects per volume, the second volume's boxes shifted along the axis
            inst = out["instances"]
            assert len(inst) == 4
            boxes = inst.gt_boxes.tensor
            box_axis = 2 - axis[0]  # boxes are (x, y, z, ...): x runs along W
            n = (6, 8, 10)[axis[0]]
            assert (boxes[:2, box_axis + 3] <= n).all() and (boxes[2:, box_axis] >= n).all()
            torch.testing.assert_close(boxes[2:, box_axis] - n, boxes[:2, box_axis])
            twin = next(again)[0]
            assert torch.equal(twin["image"], out["image"])
        assert len(axes) >= 2  # the axis is drawn per sample
    finally:
        DatasetCatalog.remove("_test_mosaic")


def test_mosaic_errors_name_what_is_wrong(tmp_path):
    records = _records(tmp_path, [(6, 8, 10)] * 2, spacings=[(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)])
    cfg = _mosaic_cfg("_test_mosaic_bad")
    mapper = DatasetMapper3D(cfg, is_train=True)
    with pytest.raises(ValueError, match="different spacing.*INPUT.TARGET_SPACING"):
        mapper.map_mosaic(records)
    with pytest.raises(ValueError, match="training only"):
        DatasetMapper3D(cfg, is_train=False).map_mosaic(records)
    cfg.INPUT.MOSAIC.AXES = [0, 3]
    with pytest.raises(ValueError, match="INPUT.MOSAIC.AXES"):
        DatasetMapper3D(cfg, is_train=True)
    cfg.INPUT.MOSAIC.AXES = [0]
    with pytest.raises(ValueError, match="INPUT.MOSAIC.NUM_VOLUMES is 2.*has no map_mosaic"):
        build_detection_train_loader(cfg, mapper=lambda record: record)
    single = DatasetMapper3D(cfg, is_train=True, mosaic_volumes=1)  # the config says 2
    with pytest.raises(ValueError, match="NUM_VOLUMES is 2.*joins 1 volumes; set it to 1"):
        build_detection_train_loader(cfg, mapper=single)
