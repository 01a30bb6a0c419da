#!/usr/bin/env python
"""
Trains and evaluates det3d models, as Detectron2's ``tools/train_net.py`` does:

.. code-block:: none

    python tools/train_net.py --config-file configs/Synthetic/mask_rcnn_R18_FPN_3d_cpu.yaml
    python tools/train_net.py --config-file cfg.yaml --resume                # continue a killed run
    python tools/train_net.py --config-file cfg.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file cfg.yaml --num-gpus 2 SOLVER.IMS_PER_BATCH 4
    python tools/train_net.py --plan DATASETS.TRAIN folder:images=a/img,labels=a/lab \
        DATASETS.TEST folder:images=b/img,labels=b/lab OUTPUT_DIR output/mine   # plan, then train

``--plan`` plans a config from the training data's fingerprint (``det3d/planning``; the
``--config-file``, if given, is the base it starts from), writes it to
``OUTPUT_DIR/planned_config.yaml`` and trains with it; a later ``--resume`` or ``--eval-only``
run into the same ``OUTPUT_DIR`` reuses that file.

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
from det3d.engine import (
    DefaultTrainer,
    check_no_earlier_run,
    default_argument_parser,
    default_setup,
    launch,
)
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


def argument_parser():
    """Detectron2's flags (``default_argument_parser``) plus ``--plan``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--plan",
        action="store_true",
        help="plan the config from DATASETS.TRAIN's fingerprint into OUTPUT_DIR/planned_config.yaml "
        "(--config-file, if given, is the base) and train with it",
    )
    parser.add_argument(
        "--plan-minutes", type=float, default=30.0, help="with --plan: the training time to fill"
    )
    return parser


def plan_run(args) -> str:
    """
    ``--plan``: writes (or, when the run's ``OUTPUT_DIR`` has one already, reuses)
    ``OUTPUT_DIR/planned_config.yaml`` for the ``DATASETS.TRAIN`` / ``DATASETS.TEST`` of the
    command line and returns its path.
    """
    from det3d.config import CfgNode
    from det3d.planning import DEFAULT_BASE, plan_dataset

    opts = dict(zip((args.opts or [])[0::2], (args.opts or [])[1::2]))
    if "DATASETS.TRAIN" not in opts:
        raise ValueError("--plan needs the training data: DATASETS.TRAIN <name or folder spec>")
    output_dir = opts.get("OUTPUT_DIR", os.path.join("output", "planned"))
    path = os.path.join(output_dir, "planned_config.yaml")
    if os.path.isfile(path) and (args.resume or args.eval_only):
        logger.info(f"--plan: reusing {path}")
        return path
    if not args.eval_only and not args.resume:
        check_no_earlier_run(output_dir)

    def names(key):
        value = CfgNode._decode_cfg_value(opts.get(key, "()"))
        return [value] if isinstance(value, str) else list(value)

    plan_dataset(
        names("DATASETS.TRAIN"),
        path,
        test=names("DATASETS.TEST"),
        budget_minutes=args.plan_minutes,
        base=args.config_file or DEFAULT_BASE,
        output_dir=output_dir,
        overwrite=True,
    )
    logger.info(f"--plan: wrote {path}")
    return path


def main(args):
    """
    Returns:
        dict: evaluation results (main process; may be empty without test datasets).
    """
    if getattr(args, "plan", False):
        args.config_file = plan_run(args)
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
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    if args.plan:  # once, before the training processes start
        args.config_file, args.plan = plan_run(args), False
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
