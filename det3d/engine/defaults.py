"""
The defaults most training scripts share: an argument parser, a ``default_setup`` (logging,
seeds, config dump), default metric writers, and ``DefaultTrainer``, a trainer built from a
config whose parts (model, optimizer, loaders, evaluators) are override points.
"""

import argparse
import contextlib
import logging
import os
import sys
import weakref
from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from det3d.checkpoint import DetectionCheckpointer, last_checkpoint_file
from det3d.config.unsupported import check_supported
from det3d.solver import build_lr_scheduler, build_optimizer, lr_first_decay
from det3d.utils import comm
from det3d.utils.collect_env import collect_env_info
from det3d.utils.env import seed_all_rng
from det3d.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from det3d.utils.file_io import atomic_write, keep_aside
from det3d.utils.logger import setup_logger

from . import hooks
from .ema import EMAHook, ModelEMA
from .train_loop import AMPTrainer, SimpleTrainer, TrainerBase

__all__ = [
    "check_no_earlier_run",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "DefaultTrainer",
    "prepare_run",
]


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """
    Wraps ``model`` in ``DistributedDataParallel`` when more than one process trains; returns it
    unchanged otherwise.

    Args:
        kwargs: for ``DistributedDataParallel`` (e.g. ``find_unused_parameters``).
    """
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs and next(model.parameters()).is_cuda:
        kwargs["device_ids"] = [comm.get_local_rank()]
    return DistributedDataParallel(model, **kwargs)


def default_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """
    Detectron2's command line:

    .. code-block:: none

        train_net.py --config-file cfg.yaml [--resume] [--eval-only] [--num-gpus N]
                     [--num-machines M --machine-rank R --dist-url tcp://host:port] [KEY VALUE ...]

    Trailing ``KEY VALUE`` pairs override config entries (``opts``).
    """
    parser = argparse.ArgumentParser(
        epilog=epilog or f"""
Examples:

Run on one machine:
    $ {sys.argv[0]} --num-gpus 8 --config-file cfg.yaml

Change some config options:
    $ {sys.argv[0]} --config-file cfg.yaml MODEL.WEIGHTS /path/to/weight.pth SOLVER.BASE_LR 0.001

Run on multiple machines:
    (machine0)$ {sys.argv[0]} --machine-rank 0 --num-machines 2 --dist-url <URL> [--other-flags]
    (machine1)$ {sys.argv[0]} --machine-rank 1 --num-machines 2 --dist-url <URL> [--other-flags]
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Resume from the checkpoint named in OUTPUT_DIR/last_checkpoint (model, optimizer, "
        "scheduler, iteration). Without it, MODEL.WEIGHTS is loaded and training starts at 0.",
    )
    parser.add_argument("--eval-only", action="store_true", help="perform evaluation only")
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="processes per machine (CPU processes without CUDA)"
    )
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument(
        "--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)"
    )
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="initialization URL for pytorch distributed backend, e.g. tcp://10.0.0.1:29500; "
        "'auto' picks a free port on 127.0.0.1 (one machine only). See "
        "https://pytorch.org/docs/stable/distributed.html",
    )
    parser.add_argument(
        "--dist-join-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long the processes of a distributed run wait for each other to join at "
        "--dist-url; then the run ends with an error naming the URL (a machine that never starts "
        "does not hang the others)",
    )
    parser.add_argument(
        "opts",
        help="Modify config options at the end of the command, as space-separated "
        '"PATH.KEY VALUE" pairs, e.g. SOLVER.MAX_ITER 100',
        default=None,
        nargs=argparse.REMAINDER,
    )
    return parser


def check_no_earlier_run(output_dir: str) -> None:
    """
    Raises :class:`FileExistsError` when ``output_dir`` holds the checkpoints of an earlier run
    (a ``last_checkpoint`` file), which a run starting from iteration 0 would overwrite.
    """
    last = last_checkpoint_file(output_dir)
    if last:
        raise FileExistsError(
            f"OUTPUT_DIR {output_dir!r} already holds the checkpoints of an earlier run (last: "
            f"{last}); training from iteration 0 would overwrite them. Pass --resume to continue "
            "that run, or choose another OUTPUT_DIR (or remove its checkpoints) to start afresh."
        )


def _keep_earlier_config(path: str, dumped: str) -> Optional[str]:
    """Renames an existing, different ``config.yaml`` to ``config.<k>.yaml``; returns that name."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        if f.read() == dumped:
            return None
    return keep_aside(path)


def default_setup(cfg, args) -> None:
    """
    What every run does first:

    1. a training run without ``--resume`` checks that ``OUTPUT_DIR`` holds no earlier run's
       checkpoints (:func:`check_no_earlier_run`), before anything is written there;
    2. creates ``cfg.OUTPUT_DIR``; sets up the ``det3d`` and ``fvcore`` loggers (console on the
       main rank, ``OUTPUT_DIR/log.txt`` on every rank, appended to);
    3. logs the environment (``collect_env_info``), the command line and the config, and writes
       the full config to ``OUTPUT_DIR/config.yaml`` (main rank; a different ``config.yaml``
       already there, e.g. the training run's before an ``--eval-only`` run, is kept as
       ``config.<k>.yaml``);
    4. seeds python / numpy / torch with ``cfg.SEED + rank`` (``SEED < 0``: a random seed, logged);
    5. sets ``torch.backends.cudnn.benchmark`` from ``cfg.CUDNN_BENCHMARK`` (not in eval-only);
    6. registers the dataset specs named in ``DATASETS.TRAIN`` / ``DATASETS.TEST``
       (``folder:images=...,labels=...``, :mod:`det3d.data.datasets.specs`), before anything is
       written, so a spec naming a missing folder fails first.

    Args:
        cfg (CfgNode): the full config.
        args (argparse.Namespace): the parsed command line (``config_file``, ``eval_only``, ...).
    """
    output_dir = cfg.OUTPUT_DIR
    prepare_run(cfg, args)
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    comm.synchronize()  # other ranks write their logs into the directory rank 0 created

    rank = comm.get_rank()
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    logger = setup_logger(output_dir, distributed_rank=rank)

    logger.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    logger.info("Environment info:\n" + collect_env_info())
    logger.info("Command line arguments: " + str(args))
    config_file = getattr(args, "config_file", "")
    if config_file:
        with open(config_file) as f:
            logger.info(f"Contents of args.config_file={config_file}:\n{f.read()}")

    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        dumped = cfg.dump()
        kept = _keep_earlier_config(path, dumped)
        if kept:
            logger.info(f"The earlier, different {path} is kept as {kept}")
        atomic_write(path, lambda f: f.write(dumped), mode="w")
        logger.info(f"Full config saved to {path}")
    logger.info(f"Running with full config:\n{cfg.dump()}")

    seed = cfg.SEED
    used_seed = seed_all_rng(None if seed < 0 else seed + rank)
    logger.info(f"Random seed of this process: {used_seed}")

    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
    if cfg.FLOAT32_PRECISION:
        torch.set_float32_matmul_precision(cfg.FLOAT32_PRECISION)


def prepare_run(cfg, args) -> None:
    """
    The steps of :func:`default_setup` that are det3d's own, done before anything is written:
    a training run without ``--resume`` refuses an ``OUTPUT_DIR`` holding an earlier run
    (:func:`check_no_earlier_run`); the dataset specs of ``DATASETS.TRAIN`` / ``DATASETS.TEST``
    are registered; the builtin synthetic splits are pointed at ``SYNTHETIC.ROOT``. A script
    whose set-up is another's (Detectron2's ``default_setup``, see
    ``projects/Det3DInDetectron2/train_net.py``) calls it first.
    """
    if not getattr(args, "eval_only", False) and not getattr(args, "resume", False):
        check_no_earlier_run(cfg.OUTPUT_DIR)
    if "DATASETS" in cfg:
        from det3d.data.datasets.specs import register_dataset_specs

        register_dataset_specs(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    _set_dataset_roots(cfg)


def _set_dataset_roots(cfg) -> None:
    """
    Points the builtin synthetic splits at ``cfg.SYNTHETIC.ROOT``. The default value defers to
    ``$DET3D_DATASETS`` when that is set, so a shared dataset folder is found without editing
    configs; a value changed in the config always wins.
    """
    if "SYNTHETIC" not in cfg:
        return
    from det3d.config import get_cfg
    from det3d.data import set_synthetic_root

    if cfg.SYNTHETIC.ROOT != get_cfg().SYNTHETIC.ROOT or "DET3D_DATASETS" not in os.environ:
        set_synthetic_root(cfg.SYNTHETIC.ROOT)


def default_writers(output_dir: str, max_iter: Optional[int] = None) -> List[EventWriter]:
    """
    The writers of a training run: ``CommonMetricPrinter`` (console), ``JSONWriter``
    (``output_dir/metrics.json``) and, when the ``tensorboard`` package is installed,
    ``TensorboardXWriter`` (event files in ``output_dir``).
    """
    os.makedirs(output_dir, exist_ok=True)
    writers: List[EventWriter] = [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
    ]
    tb = TensorboardXWriter(output_dir)
    if tb.enabled:
        writers.append(tb)
    return writers


class DefaultTrainer(TrainerBase):
    """
    A trainer with the default behaviour, built from a config:

    * model, optimizer, LR scheduler and train loader from ``build_*`` (override points);
    * ``SimpleTrainer`` (``AMPTrainer`` with ``SOLVER.AMP.ENABLED``), inside DDP when more than
      one process trains;
    * hooks from ``build_hooks``: iteration timer, LR scheduler, periodic checkpoints, evaluation
      every ``TEST.EVAL_PERIOD`` and at the end, best checkpoint (``SOLVER.BEST_CHECKPOINT_*``),
      metric writers every ``SOLVER.LOG_PERIOD``;
    * ``resume_or_load``: ``MODEL.WEIGHTS``, or with ``resume`` the last checkpoint of
      ``OUTPUT_DIR`` with optimizer, scheduler and iteration.

    A project subclasses it and overrides what differs (see ``tools/train_net.py``):

    .. code-block:: python

        class Trainer(DefaultTrainer):
            @classmethod
            def build_evaluator(cls, cfg, dataset_name):
                return COCO3DEvaluator(dataset_name, output_dir=cfg.OUTPUT_DIR)

        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()

    ``find_unused_parameters`` of DDP is on when ``MODEL.DDP_FIND_UNUSED_PARAMETERS`` is set or
    ``MODEL.FREEZE_MODULES`` is not empty (a partly frozen graph can leave trainable parameters
    without gradient); it costs an extra graph traversal per iteration, so it is off otherwise.

    * ``SOLVER.TIME_BUDGET_MINUTES``: ``MAX_ITER`` is a first estimate; the run's length is
      re-fitted to its measured speed so that training fills that many minutes
      (``hooks.TimeBudget``).
    * ``MODEL_EMA.ENABLED``: an exponential moving average of the weights (``det3d.engine.ema``),
      which evaluation uses and every checkpoint holds as ``"ema"``.

    Attributes:
        scheduler, checkpointer (DetectionCheckpointer), cfg (CfgNode), model, optimizer,
        ema (ModelEMA or None).
    """

    def __init__(self, cfg):
        super().__init__()
        logger = logging.getLogger("det3d")
        if not logger.isEnabledFor(logging.INFO):  # default_setup was not called
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        model = create_ddp_model(
            model, broadcast_buffers=False, find_unused_parameters=self._find_unused_parameters(cfg)
        )
        if cfg.SOLVER.AMP.ENABLED:
            self._trainer = AMPTrainer(
                model, data_loader, optimizer, precision=cfg.SOLVER.AMP.DTYPE
            )
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        # The inner trainer calls after_backward on the same hooks as this one.
        self._trainer._hooks = self._hooks

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # MODEL_EMA: the averaged weights, saved in every checkpoint as "ema"
        self.ema = ModelEMA(model) if cfg.MODEL_EMA.ENABLED else None
        extra = {"ema": self.ema} if self.ema is not None else {}
        self.checkpointer = DetectionCheckpointer(
            # weakref: the checkpointer must not keep the trainer alive
            model,
            cfg.OUTPUT_DIR,
            trainer=weakref.proxy(self),
            **extra,
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self._last_eval_results: Optional[Dict] = None

        self.register_hooks(self.build_hooks())

    @staticmethod
    def _find_unused_parameters(cfg) -> bool:
        return bool(cfg.MODEL.get("DDP_FIND_UNUSED_PARAMETERS", False)) or bool(
            cfg.MODEL.get("FREEZE_MODULES", [])
        )

    def resume_or_load(self, resume: bool = True) -> None:
        """
        With ``resume`` and a ``last_checkpoint`` in ``OUTPUT_DIR``: restores the model, optimizer,
        scheduler, hook states and iteration from it, and training continues at the next
        iteration. Otherwise loads ``MODEL.WEIGHTS`` (model only; may be "") and starts at 0;
        then ``OUTPUT_DIR`` must not hold an earlier run's checkpoints, which training from
        iteration 0 would overwrite (:class:`FileExistsError` names them).
        """
        if not resume:
            check_no_earlier_run(self.cfg.OUTPUT_DIR)
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            # The checkpoint holds the iteration that had just finished.
            self.start_iter = self.iter + 1

    def build_hooks(self) -> List[hooks.HookBase]:
        """
        The default hooks, in this order: IterationTimer, TimeBudget (if
        SOLVER.TIME_BUDGET_MINUTES), LRScheduler, EMAHook (if
        MODEL_EMA.ENABLED), PeriodicCheckpointer (main rank), EvalHook (with the EMA's weights if
        there is one), BestCheckpointer (main rank, if SOLVER.BEST_CHECKPOINT_METRIC),
        PeriodicWriter (main rank).
        """
        cfg = self.cfg
        check_supported(cfg)  # e.g. TEST.PRECISE_BN: an error naming the key, not a warning
        ret: List[Optional[hooks.HookBase]] = [hooks.IterationTimer()]
        if cfg.SOLVER.TIME_BUDGET_MINUTES:
            # lengthening stops at 75% of the run, or at the schedule's first decay if earlier
            until = min(0.75, lr_first_decay(cfg) or 1.0)
            ret.append(hooks.TimeBudget(cfg.SOLVER.TIME_BUDGET_MINUTES, refit_until=until))
        ret.append(hooks.LRScheduler())
        if self.ema is not None:
            ret.append(EMAHook(self.ema, cfg.MODEL_EMA.DECAY))
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))

        def test_and_save_results():
            swap = self.ema.swapped_into(self.model) if self.ema else contextlib.nullcontext()
            with swap:
                self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        # Every rank evaluates (evaluation is distributed); only rank 0 gets the results.
        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process() and cfg.SOLVER.BEST_CHECKPOINT_METRIC:
            ret.append(
                hooks.BestCheckpointer(
                    cfg.TEST.EVAL_PERIOD,
                    self.checkpointer,
                    cfg.SOLVER.BEST_CHECKPOINT_METRIC,
                    mode=cfg.SOLVER.BEST_CHECKPOINT_MODE,
                )
            )
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=cfg.SOLVER.LOG_PERIOD))
        return ret

    def build_writers(self) -> List[EventWriter]:
        """The writers of the run; by default ``default_writers(OUTPUT_DIR, MAX_ITER)``."""
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    def train(self) -> Optional[Dict]:
        """
        Runs training from ``start_iter`` to ``SOLVER.MAX_ITER``, or with
        ``SOLVER.TIME_BUDGET_MINUTES`` to the iteration that fills the budget.

        Returns:
            dict or None: the results of the last evaluation (main rank).
        """
        super().train(self.start_iter, self.max_iter)
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            from det3d.evaluation import verify_results

            if not self._last_eval_results:
                raise RuntimeError("TEST.EXPECTED_RESULTS is set but no evaluation ran")
            verify_results(self.cfg, self._last_eval_results)
        return self._last_eval_results

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def state_dict(self) -> dict:
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])

    @property
    def model(self) -> torch.nn.Module:
        return self._trainer.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._trainer.optimizer

    @property
    def data_loader(self):
        return self._trainer.data_loader

    # ------------------------------------------------------------ override points
    @classmethod
    def build_model(cls, cfg) -> torch.nn.Module:
        """``det3d.modeling.build_model(cfg)``; logs the model."""
        from det3d.modeling import build_model

        model = build_model(cfg)
        logging.getLogger(__name__).info(f"Model:\n{model}")
        return model

    @classmethod
    def build_optimizer(cls, cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
        """``det3d.solver.build_optimizer`` (with gradient clipping from SOLVER.CLIP_GRADIENTS)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer: torch.optim.Optimizer):
        """``det3d.solver.build_lr_scheduler``."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """``det3d.data.build_detection_train_loader(cfg)``: an endless iterable of batches."""
        from det3d.data import build_detection_train_loader

        return build_detection_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        """``det3d.data.build_detection_test_loader(cfg, dataset_name)``."""
        from det3d.data import build_detection_test_loader

        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: Optional[str] = None):
        """
        Returns:
            DatasetEvaluator: those named in ``TEST.EVALUATORS``
            (:func:`det3d.evaluation.build_evaluator`), writing to ``output_folder`` (default
            ``OUTPUT_DIR/inference/<dataset_name>``). Override it to measure something else.

        Raises:
            NotImplementedError: ``TEST.EVALUATORS`` is empty.
        """
        from det3d.evaluation import build_evaluator

        evaluator = build_evaluator(cfg, dataset_name, output_folder)
        if evaluator is None:
            raise NotImplementedError(f"TEST.EVALUATORS is empty: no evaluator for {dataset_name}")
        return evaluator

    @classmethod
    def test(cls, cfg, model: torch.nn.Module, evaluators=None) -> Dict:
        """
        Evaluates ``model`` on every dataset of ``cfg.DATASETS.TEST``.

        Args:
            evaluators (list[DatasetEvaluator] or None): one per test dataset; None: from
                ``build_evaluator``.

        Returns:
            dict: ``{dataset_name: results}``, or the results themselves for a single dataset.
        """
        logger = logging.getLogger(__name__)
        datasets = list(cfg.DATASETS.TEST)
        if datasets:
            from det3d.evaluation import inference_on_dataset, print_csv_format
        if evaluators is not None:
            if not isinstance(evaluators, (list, tuple)):
                evaluators = [evaluators]
            if len(evaluators) != len(datasets):
                raise ValueError(
                    f"{len(evaluators)} evaluators given for {len(datasets)} test datasets "
                    f"{datasets}"
                )
        results = OrderedDict()
        for idx, dataset_name in enumerate(datasets):
            data_loader = cls.build_test_loader(cfg, dataset_name)
            if evaluators is not None:
                evaluator = evaluators[idx]
            else:
                try:
                    evaluator = cls.build_evaluator(cfg, dataset_name)
                except NotImplementedError:
                    logger.warning(
                        "No evaluator found. Use `DefaultTrainer.test(evaluators=)`, "
                        "or implement its `build_evaluator` method."
                    )
                    results[dataset_name] = {}
                    continue
            results_i = inference_on_dataset(model, data_loader, evaluator)
            results[dataset_name] = results_i
            if comm.is_main_process():
                if not isinstance(results_i, dict):
                    raise TypeError(
                        f"Evaluator must return a dict on the main process; got {results_i!r}"
                    )
                logger.info(f"Evaluation results for {dataset_name} in csv format:")
                print_csv_format(results_i)
        if len(results) == 1:
            results = list(results.values())[0]
        return results

    @staticmethod
    def auto_scale_workers(cfg, num_workers: int):
        """
        When ``SOLVER.REFERENCE_WORLD_SIZE`` is set and differs from ``num_workers``, returns a
        config scaled to ``num_workers`` processes by the linear scaling rule: batch size and
        learning rate scaled by ``num_workers / REFERENCE_WORLD_SIZE``, iteration counts
        (MAX_ITER, WARMUP_ITERS, STEPS, EVAL_PERIOD, CHECKPOINT_PERIOD) by its inverse.
        Otherwise returns ``cfg`` unchanged.
        """
        old_world_size = cfg.SOLVER.REFERENCE_WORLD_SIZE
        if old_world_size == 0 or old_world_size == num_workers:
            return cfg
        cfg = cfg.clone()
        frozen = cfg.is_frozen()
        cfg.defrost()
        if cfg.SOLVER.IMS_PER_BATCH % old_world_size != 0:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by "
                f"SOLVER.REFERENCE_WORLD_SIZE {old_world_size}"
            )
        scale = num_workers / old_world_size
        bs = cfg.SOLVER.IMS_PER_BATCH = int(round(cfg.SOLVER.IMS_PER_BATCH * scale))
        lr = cfg.SOLVER.BASE_LR = cfg.SOLVER.BASE_LR * scale
        max_iter = cfg.SOLVER.MAX_ITER = int(round(cfg.SOLVER.MAX_ITER / scale))
        warmup_iter = cfg.SOLVER.WARMUP_ITERS = int(round(cfg.SOLVER.WARMUP_ITERS / scale))
        cfg.SOLVER.STEPS = tuple(int(round(s / scale)) for s in cfg.SOLVER.STEPS)
        cfg.TEST.EVAL_PERIOD = int(round(cfg.TEST.EVAL_PERIOD / scale))
        cfg.SOLVER.CHECKPOINT_PERIOD = int(round(cfg.SOLVER.CHECKPOINT_PERIOD / scale))
        cfg.SOLVER.REFERENCE_WORLD_SIZE = num_workers
        logging.getLogger(__name__).info(
            f"Auto-scaling the config to batch_size={bs}, learning_rate={lr}, "
            f"max_iter={max_iter}, warmup={warmup_iter}."
        )
        if frozen:
            cfg.freeze()
        return cfg
