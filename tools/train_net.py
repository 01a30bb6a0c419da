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
``DefaultTrainer`` and override the ``build_*`` class methods that differ; everything else (model,
optimizer, schedule, loaders, evaluators of ``TEST.EVALUATORS``, hooks, checkpointing, DDP) comes
from the config.
"""

import logging
import os
from datetime import timedelta

from det3d.checkpoint import DetectionCheckpointer, last_checkpoint_file
from det3d.config import get_cfg
from det3d.engine import (
    DefaultTrainer,
    check_no_earlier_run,
    default_argument_parser,
    default_setup,
    launch,
)
from det3d.evaluation import build_evaluator, verify_results  # noqa: F401 (build_evaluator: API)
from det3d.utils import comm

logger = logging.getLogger("det3d.tools.train_net")


class Trainer(DefaultTrainer):
    """
    ``DefaultTrainer`` as it is: its evaluators are those of ``TEST.EVALUATORS``, built by
    ``det3d.evaluation.build_evaluator``. A project changes what it needs by overriding a
    ``build_*`` class method, e.g. a custom train loader:

    .. code-block:: python

        class Trainer(DefaultTrainer):
            @classmethod
            def build_train_loader(cls, cfg):
                return build_detection_train_loader(cfg, mapper=MyMapper(cfg, is_train=True))
    """


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
        "--plan-minutes",
        type=float,
        default=30.0,
        help="with --plan: the time budget (training fills 90%% of it, evaluation follows)",
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
        # strict: metrics of a model that got only some of its weights must not pass for results
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict=True).resume_or_load(
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
        join_timeout=timedelta(seconds=args.dist_join_timeout),
    )


if __name__ == "__main__":
    invoke_main()
