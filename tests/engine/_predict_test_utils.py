"""A stub model that finds objects exactly, and synthetic volumes, for the tiling tests."""

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from det3d.config import get_cfg
from det3d.data import make_synthetic_volume, write_volume
from det3d.modeling import META_ARCH_REGISTRY
from det3d.structures import Instances


class ThresholdModel(nn.Module):
    """
    A meta-architecture stand-in: each connected component of ``image > 0.5`` is an instance
    (score from its mean intensity, class 0). It sees objects exactly as far as the input shows
    them, so any loss, cut or duplicate in a tiled result is the tiling's doing.
    """

    def forward(self, batched_inputs):
        outputs = []
        for d in batched_inputs:
            image = d["image"][0].numpy()
            labels, n = ndimage.label(image > 0.5)
            means = ndimage.mean(image, labels, np.arange(1, n + 1)) if n else np.zeros(0)
            inst = Instances(labels.shape)
            inst.scores = torch.as_tensor(np.asarray(means), dtype=torch.float32)
            inst.pred_classes = torch.zeros(n, dtype=torch.int64)
            labels = torch.from_numpy(labels.astype(np.int32))
            outputs.append({"instances": inst, "instance_labels": labels})
        return outputs


def object_volume(shape=(24, 80, 96), num_objects=24, seed=0, size_range=(2.0, 3.0)):
    """
    (image uint16 (1, D, H, W), labels int32): separated objects of radius <= ~4 voxels, bright
    (>= 1000) on a 0 background; raw intensities above 500 are object voxels.
    """
    image, labels, _ = make_synthetic_volume(
        shape, num_objects=num_objects, size_range=size_range, spacing=(1.0, 1.0, 1.0),
        contrast=1.0, background=0.0, noise="none", blur_sigma=0.0, gap=2.0, seed=seed,
    )
    raw = np.where(labels > 0, 1000 + 10 * labels, 0).astype(np.uint16)[None]
    return raw, labels


def stub_cfg(size=(16, 32, 32), overlap=(8, 16, 16)):
    """A config for the stub: no intensity scaling (raw / 1000 is done by bounds), tile keys."""
    cfg = get_cfg()
    cfg.INPUT.NORM_PERCENTILES = []
    cfg.TEST.TILE.SIZE = list(size)
    cfg.TEST.TILE.OVERLAP = list(overlap)
    return cfg


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label volumes hold the same objects (equal up to renumbering)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[a > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@META_ARCH_REGISTRY.register()
class PredictTestThresholdModel(ThresholdModel):
    """:class:`ThresholdModel` as a registered meta-architecture, for the command line."""

    def __init__(self, cfg=None):
        super().__init__()


def stub_command_files(
    tmp_path, raw, spacing=(1.0, 0.5, 0.5), size=(16, 32, 32), overlap=(12, 16, 16)
):
    """Writes vol.tif, an (empty) weights file and a config for the registered stub; returns
    (config path, weights path, volume path)."""
    write_volume(str(tmp_path / "vol.tif"), raw, spacing=spacing)
    torch.save({"model": {}}, str(tmp_path / "stub.pth"))
    cfg = stub_cfg(size, overlap)
    cfg.MODEL.META_ARCHITECTURE = "PredictTestThresholdModel"
    cfg.MODEL.WEIGHTS = str(tmp_path / "stub.pth")
    (tmp_path / "stub.yaml").write_text(cfg.dump())
    return str(tmp_path / "stub.yaml"), str(tmp_path / "stub.pth"), str(tmp_path / "vol.tif")


def read_table(path):
    """The object CSV as a list of dicts with numbers parsed."""
    import csv

    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{k: (v if k == "class_name" else float(v)) for k, v in r.items()} for r in rows]
