#!/usr/bin/env python
"""
The det3d demo (``make demo``): trains a small 3D Mask R-CNN on synthetic microscopy volumes on the
CPU (``configs/Synthetic/mask_rcnn_R18_FPN_3d_demo.yaml``: 1000 iterations, about 4 minutes on
2 cores), evaluates it, and draws its instances over slices of a validation volume.

.. code-block:: none

    python tools/demo.py                                    # train + evaluate + picture
    python tools/demo.py --eval-only MODEL.WEIGHTS output/demo/model_final.pth
    python tools/demo.py --resume                           # continue an interrupted demo

Run again over an earlier run's ``OUTPUT_DIR``, it continues that run (a finished one is only
evaluated again) instead of overwriting its checkpoints; remove the folder to train afresh.

Every ``tools/train_net.py`` flag and ``KEY VALUE`` override works here too. Outputs go to
``OUTPUT_DIR`` (default ``./output/demo``): checkpoints, ``metrics.json``, ``log.txt``,
``inference/`` and ``predictions/`` (one ``<volume>_labels.tif`` label volume and one
``<volume>.png`` slice montage per validation volume; white: ground truth, colours: predictions).
"""
import logging
import os
import sys
from typing import List, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_net  # noqa: E402  (tools/train_net.py: setup, Trainer)

from det3d.checkpoint import DetectionCheckpointer, last_checkpoint_file  # noqa: E402
from det3d.data import (  # noqa: E402
    DatasetCatalog,
    build_detection_test_loader,
    load_record_labels,
    write_volume,
)
from det3d.engine import default_argument_parser  # noqa: E402
from det3d.evaluation import inference_context  # noqa: E402
from det3d.utils.visualizer import volume_montage, write_png  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "Synthetic", "mask_rcnn_R18_FPN_3d_demo.yaml")
logger = logging.getLogger("det3d.tools.demo")

# What a new user does next: their own folders of image volumes and instance label volumes
# (matching file names), planned and trained with no Python (det3d/data/datasets/specs.py).
OWN_DATA_HINT = """
Your own data: a folder of image volumes (TIFF/zarr) and one of instance label volumes with the
same file names. One command plans a config from their fingerprint, trains and evaluates:
  .venv/bin/python tools/train_net.py --plan OUTPUT_DIR output/my_data \\
      DATASETS.TRAIN folder:images=DIR/train/images,labels=DIR/train/labels \\
      DATASETS.TEST folder:images=DIR/val/images,labels=DIR/val/labels
(add ,spacing=Z:Y:X and ,classes=a:b,class_map=FILE to a folder spec where needed; README.md)"""


def write_predictions(cfg, model, dataset_name: str, output_dir: str) -> Tuple[str, List[str]]:
    """
    Runs ``model`` on every volume of ``dataset_name``; writes each predicted label volume as a
    TIFF (with the record's spacing) and a PNG montage of slices (white outlines: ground truth,
    colours: predictions) into ``output_dir/predictions``.

    Returns:
        the folder, and the paths of the PNG montages.
    """
    folder = os.path.join(output_dir, "predictions")
    os.makedirs(folder, exist_ok=True)
    records = DatasetCatalog.get(dataset_name)
    pictures = []
    loader = build_detection_test_loader(cfg, dataset_name, dataset=records)
    with inference_context(model), torch.no_grad():
        for record, inputs in zip(records, loader):
            output = model(inputs)[0]
            pred = output["instance_labels"].cpu().numpy()
            name = os.path.splitext(os.path.basename(record["file_name"]))[0]
            write_volume(os.path.join(folder, f"{name}_labels.tif"), pred, record.get("spacing"))
            gt, _ = load_record_labels(record)
            image = inputs[0]["image"].cpu().numpy()
            picture = volume_montage(image, pred, gt, num_slices=8, columns=4)
            path = os.path.join(folder, f"{name}.png")
            write_png(path, picture)
            pictures.append(path)
            found = int(np.count_nonzero(np.unique(pred)))
            logger.info(f"{found} instances in {record['file_name']}")
    return folder, pictures


def summary(results: dict) -> str:
    """The few numbers worth reading first."""
    rows = []
    for task, key in [
        ("segm", "AP"),
        ("segm", "AP50"),
        ("bbox", "AP"),
        ("matching", "f1@0.5"),
        ("matching", "panoptic_quality@0.5"),
        ("seg", "SEG"),
    ]:
        value = results.get(task, {}).get(key)
        if value is not None:
            rows.append(f"  {task + '/' + key:<30} {value:8.4f}")
    return "\n".join(rows)


def main(args):
    if not args.config_file:
        args.config_file = DEFAULT_CONFIG
    if "OUTPUT_DIR" not in (args.opts or [])[::2]:
        args.opts = list(args.opts or []) + ["OUTPUT_DIR", os.path.join("output", "demo")]
    output_dir = dict(zip(args.opts[::2], args.opts[1::2]))["OUTPUT_DIR"]  # the last one given
    # A second `make demo` continues (or, when finished, re-evaluates) the first run rather than
    # overwrite its checkpoints.
    continuing = not (args.resume or args.eval_only) and bool(last_checkpoint_file(output_dir))
    args.resume = args.resume or continuing
    cfg = train_net.setup(args)
    if continuing:
        logger.info(
            "%s holds an earlier demo run: continuing it (remove the folder to train afresh)",
            cfg.OUTPUT_DIR,
        )

    if args.eval_only:
        model = train_net.Trainer.build_model(cfg)
        if not cfg.MODEL.WEIGHTS and not args.resume:
            raise ValueError("--eval-only needs MODEL.WEIGHTS path/to/model.pth (or --resume)")
        DetectionCheckpointer(model, cfg.OUTPUT_DIR, strict=True).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = train_net.Trainer.test(cfg, model)
    else:
        trainer = train_net.Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
        model = trainer.model

    folder, pictures = write_predictions(cfg, model, cfg.DATASETS.TEST[0], cfg.OUTPUT_DIR)
    print(f"\ndet3d demo results ({cfg.DATASETS.TEST[0]}):\n{summary(results or {})}")
    print(f"Predicted label volumes (TIFF) and slice montages (PNG): {folder}")
    print(f"  e.g. {pictures[0]} (white: ground truth, colours: predictions)")
    print(f"Checkpoints, metrics.json and log.txt: {cfg.OUTPUT_DIR}")
    print(OWN_DATA_HINT)
    return results


if __name__ == "__main__":
    main(default_argument_parser().parse_args())
