#!/usr/bin/env python
"""
Trains and evaluates det3d models, as Detectron2's ``tools/train_net.py`` does:

.. code-block:: none

    python tools/train_net.py --config-file configs/Synthetic/mask_rcnn_R18_FPN_3d_cpu.yaml
    python tools/train_net.py --config-file cfg.yaml --resume                # continue a killed run
    python tools/train_net.py --config-file cfg.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file cfg.yaml --num-gpus 2 SOLVER.IMS_PER_BATCH 4

It is also the example of how a project builds its own training script: subclass
``DefaultTrainer`` and override the ``build_*`` class methods that differ (here only
``build_evaluator``); everything else (model, optimizer, schedule, loaders, hooks,
checkpointing, DDP) comes from the config.
"""

import logging
import os

from det3d.checkpoint import DetectionCheckpointer, last_checkpoint_file
from det3d.config import get_cfg
from det3d.data.datasets import dataset_folder_name
from det3d.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from det3d.evaluation import (
    COCO3DEvaluator,
    DatasetEvaluators,
    InstanceMatchingEvaluator,
    SEGEvaluator,
    verify_results,
)
from det3d.utils import comm

logger = logging.getLogger("det3d.tools.train_net")

_EVALUATOR_NAMES = ("coco3d", "matching", "seg")


def build_evaluator(cfg, dataset_name: str, output_folder: str = None):
    """
    The evaluators named in ``cfg.TEST.EVALUATORS``:

    * ``"coco3d"``: ``COCO3DEvaluator`` (box and mask AP, ``TEST.MAX_DETS`` detections per volume);
    * ``"matching"``: ``InstanceMatchingEvaluator`` at ``TEST.MATCHING_IOU_THRESHOLDS``;
    * ``"seg"``: ``SEGEvaluator`` (the Cell Tracking Challenge SEG measure).

    Results are written under ``OUTPUT_DIR/inference/<dataset_name>`` (a dataset spec's name made
    safe for the file system, see ``det3d.data.datasets.dataset_folder_name``).
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_folder_name(dataset_name))
    evaluators = []
    for name in cfg.TEST.EVALUATORS:
        if name == "coco3d":
            evaluators.append(
                COCO3DEvaluator(dataset_name, output_dir=output_folder, max_dets=cfg.TEST.MAX_DETS)
            )
        elif name == "matching":
            evaluators.append(
                InstanceMatchingEvaluator(
                    dataset_name,
                    thresholds=cfg.TEST.MATCHING_IOU_THRESHOLDS,
                    output_dir=output_folder,
                )
            )
        elif name == "seg":
            evaluators.append(SEGEvaluator(dataset_name, output_dir=output_folder))
        else:
            raise ValueError(
                f"Unknown evaluator {name!r} in TEST.EVALUATORS; "
                f"choose from {list(_EVALUATOR_NAMES)}"
            )
    if not evaluators:
        raise NotImplementedError(f"TEST.EVALUATORS is empty: no evaluator for {dataset_name}")
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


class Trainer(DefaultTrainer):
    """
    ``DefaultTrainer`` with the evaluators of ``TEST.EVALUATORS``. A project changes what it needs
    the same way, e.g. a custom train loader:

    .. code-block:: python

        class Trainer(DefaultTrainer):
            @classmethod
            def build_train_loader(cls, cfg):
                return build_detection_train_loader(cfg, mapper=MyMapper(cfg, is_train=True))
    """

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str = None):
        return build_evaluator(cfg, dataset_name, output_folder)


def setup(args):
    """
    Builds the config of the run: defaults, ``--config-file`` (with its ``_BASE_`` chain), then
    the ``KEY VALUE`` overrides of the command line; freezes it and runs ``default_setup``.
    Unknown keys and missing files raise errors that name them.
    """
    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    """
    Returns:
        dict: evaluation results (main process; may be empty without test datasets).
    """
    cfg = setup(args)

    if args.eval_only:
        if not cfg.MODEL.WEIGHTS and not (args.resume and last_checkpoint_file(cfg.OUTPUT_DIR)):
            raise ValueError(
                "--eval-only needs weights: give MODEL.WEIGHTS path/to/model.pth (or --resume "
                f"with a last_checkpoint in OUTPUT_DIR={cfg.OUTPUT_DIR!r})"
            )
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
