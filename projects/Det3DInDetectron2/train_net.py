#!/usr/bin/env python
"""
Trains and evaluates det3d models with Detectron2's own trainer: Detectron2's ``get_cfg``,
``DefaultTrainer``, ``default_setup``, ``launch``, ``DetectionCheckpointer`` and command line,
with det3d as a plugin. It is Detectron2's ``tools/train_net.py`` plus the three lines a
Detectron2 project adds for a plugin (``import det3d``, ``add_det3d_config``, a ``Trainer`` that
builds the plugin's data loaders and evaluators):

.. code-block:: none

    python projects/Det3DInDetectron2/train_net.py \\
        --config-file projects/Det3DInDetectron2/configs/mask_rcnn_R18_FPN_3d_synthetic.yaml
    python projects/Det3DInDetectron2/train_net.py --config-file CFG --resume
    python projects/Det3DInDetectron2/train_net.py --config-file CFG --eval-only \\
        MODEL.WEIGHTS output/.../model_final.pth

Needs Detectron2 installed beside det3d (see this folder's README).
"""

import logging
import os

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, hooks, launch
from detectron2.evaluation import verify_results

import det3d  # noqa: F401  registers det3d's models, datasets and evaluators in Detectron2's
from det3d.config import add_det3d_config
from det3d.data import build_detection_test_loader, build_detection_train_loader
from det3d.engine import prepare_run
from det3d.evaluation import (
    COCO3DEvaluator,
    DatasetEvaluators,
    InstanceMatchingEvaluator,
    SEGEvaluator,
)

logger = logging.getLogger("detectron2.projects.det3d")


class Trainer(DefaultTrainer):
    """
    Detectron2's ``DefaultTrainer`` with det3d's volume loaders and evaluators: the override
    points a Detectron2 project normally uses. The model (``detectron2.modeling.build_model``),
    optimizer (``SOLVER.OPTIMIZER`` honoured), LR schedule, hooks, checkpoints and metric writers
    are Detectron2's.
    """

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """det3d's evaluators named in ``TEST.EVALUATORS``, writing to OUTPUT_DIR/inference."""
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        builders = {
            "coco3d": lambda: COCO3DEvaluator(
                dataset_name, output_dir=output_folder, max_dets=cfg.TEST.MAX_DETS
            ),
            "matching": lambda: InstanceMatchingEvaluator(
                dataset_name, thresholds=cfg.TEST.MATCHING_IOU_THRESHOLDS, output_dir=output_folder
            ),
            "seg": lambda: SEGEvaluator(dataset_name, output_dir=output_folder),
        }
        unknown = [name for name in cfg.TEST.EVALUATORS if name not in builders]
        if unknown:
            raise ValueError(
                f"Unknown evaluator(s) {unknown} in TEST.EVALUATORS; choose from {list(builders)}"
            )
        return DatasetEvaluators([builders[name]() for name in cfg.TEST.EVALUATORS])

    def build_hooks(self):
        if self.cfg.SOLVER.TIME_BUDGET_MINUTES:
            # Detectron2's loop runs a fixed MAX_ITER; only det3d's trainer re-fits it.
            raise ValueError(
                "SOLVER.TIME_BUDGET_MINUTES is set, but Detectron2's trainer runs SOLVER.MAX_ITER "
                "iterations as given; train with det3d's tools/train_net.py or set it to 0"
            )
        # Detectron2's hooks, plus its BestCheckpointer where the det3d config asks for one
        # (SOLVER.BEST_CHECKPOINT_METRIC), after the EvalHook that produces the metric.
        ret = super().build_hooks()
        metric = self.cfg.SOLVER.BEST_CHECKPOINT_METRIC
        if metric and comm.is_main_process():
            ret.append(
                hooks.BestCheckpointer(
                    self.cfg.TEST.EVAL_PERIOD,
                    self.checkpointer,
                    metric,
                    mode=self.cfg.SOLVER.BEST_CHECKPOINT_MODE,
                )
            )
        return ret


def setup(args):
    """Detectron2's config with det3d's keys, then the file and the command-line overrides."""
    cfg = get_cfg()
    add_det3d_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    # det3d's own set-up steps, before Detectron2's writes anything: refuse to train from
    # iteration 0 over an earlier run's checkpoints, register the dataset specs of
    # DATASETS.TRAIN / TEST (folder:..., ctc:...), find the synthetic splits.
    prepare_run(cfg, args)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)

    if args.eval_only:
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
