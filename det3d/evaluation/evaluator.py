"""The evaluator protocol and the loop that runs a model over a test set."""

import datetime
import logging
import time
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from typing import Dict, Iterable, List, Optional, Union

import torch
from torch import nn
from tqdm import tqdm

from det3d.utils import comm

__all__ = [
    "DatasetEvaluator",
    "DatasetEvaluators",
    "gather_on_main_process",
    "inference_on_dataset",
    "inference_context",
]

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """
    Base class of evaluators: it consumes the inputs and outputs of a model, one batch at a time,
    and computes metrics over the whole dataset. The calls come in this order::

        evaluator.reset()
        for inputs in data_loader:
            outputs = model(inputs)
            evaluator.process(inputs, outputs)   # once per batch
        results = evaluator.evaluate()           # once, on every rank

    In distributed inference each rank processes its own shard; ``evaluate()`` gathers what it
    needs, returns the results on the main process and may return ``None`` (or ``{}``) on the
    others. ``process`` should keep only compact per-volume statistics (counts, RLEs), never
    whole volumes.
    """

    def reset(self) -> None:
        """Prepares for a new round of evaluation; called before the first ``process``."""

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """
        Args:
            inputs: the model's inputs (mapper dicts with ``image_id``, ``file_name``, ``depth``,
                ``height``, ``width``).
            outputs: the model's outputs for those inputs (``instances``, ``instance_labels``).
        """

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        """
        Returns:
            dict of task name (``"bbox"``, ``"segm"``, ``"matching"``, ``"seg"``) to a dict of
            metric name to a float, e.g. ``{"bbox": {"AP50": 80.6}}``. Other ranks may return None.
        """


class DatasetEvaluators(DatasetEvaluator):
    """Runs several evaluators together; their task names must differ."""

    def __init__(self, evaluators: Iterable[DatasetEvaluator]):
        super().__init__()
        self._evaluators = list(evaluators)

    def reset(self) -> None:
        for evaluator in self._evaluators:
            evaluator.reset()

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for evaluator in self._evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        results: Dict[str, Dict[str, float]] = OrderedDict()
        for evaluator in self._evaluators:
            result = evaluator.evaluate()
            if comm.is_main_process() and result is not None:
                for k, v in result.items():
                    if k in results:
                        raise KeyError(
                            f"Two evaluators returned the task {k!r}: "
                            f"{[type(e).__name__ for e in self._evaluators]}"
                        )
                    results[k] = v
        return results


def gather_on_main_process(items: List, distributed: bool = True) -> Optional[List]:
    """
    What an evaluator's ``evaluate()`` does first: every rank's ``items`` concatenated in rank
    order on the main process, None on the others (collective: every rank must call it).
    Without ``distributed``, ``items`` itself.
    """
    if not distributed:
        return items
    comm.synchronize()
    gathered = [x for part in comm.all_gather(items) for x in part]
    return gathered if comm.is_main_process() else None


@contextmanager
def inference_context(model: nn.Module):
    """Puts ``model`` in eval mode for the block and restores its previous training mode."""
    training_mode = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training_mode)


def inference_on_dataset(
    model: Union[nn.Module, "callable"],
    data_loader: Iterable,
    evaluator: Union[DatasetEvaluator, List[DatasetEvaluator], None],
) -> Dict[str, Dict[str, float]]:
    """
    Runs ``model`` over every batch of ``data_loader`` under ``torch.no_grad()`` (and in eval mode
    when it is a module, restored afterwards) and feeds ``evaluator``. Logs the total time and the
    time per volume, excluding the first few warm-up batches.

    Args:
        model: a callable taking a batch (``list[dict]``) and returning ``list[dict]``.
        data_loader: an iterable of batches; ``len()`` is used for progress when it has one.
        evaluator: an evaluator, a list of them, or None (inference only).

    Returns:
        the evaluator's results (``{}`` when there is none, or on non-main ranks).
    """
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, (list, tuple)):
        evaluator = DatasetEvaluators(evaluator)
    try:
        total = len(data_loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    logger.info("Start inference on %s batches", total if total is not None else "?")
    evaluator.reset()

    num_warmup = min(5, total - 1) if total else 0
    n_volumes = n_timed_volumes = 0
    start = time.perf_counter()
    timed_start, compute_time = start, 0.0
    with ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        progress = tqdm(
            data_loader,
            total=total,
            desc="inference",
            unit="batch",
            disable=not comm.is_main_process(),
            mininterval=5.0,
        )
        for idx, inputs in enumerate(progress):
            if idx == num_warmup:
                timed_start, compute_time, n_timed_volumes = time.perf_counter(), 0.0, 0
            t0 = time.perf_counter()
            outputs = model(inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            compute_time += time.perf_counter() - t0
            evaluator.process(inputs, outputs)
            n = len(inputs) if hasattr(inputs, "__len__") else 1
            n_volumes += n
            n_timed_volumes += n

    total_time = time.perf_counter() - start
    timed = time.perf_counter() - timed_start
    per_volume = timed / max(n_timed_volumes, 1)
    logger.info(
        "Total inference time: %s (%.4f s / volume on %d rank(s), %d volumes)",
        datetime.timedelta(seconds=int(total_time)),
        per_volume,
        comm.get_world_size(),
        n_volumes,
    )
    logger.info(
        "Total inference pure compute time: %s (%.4f s / volume)",
        datetime.timedelta(seconds=int(compute_time)),
        compute_time / max(n_timed_volumes, 1),
    )
    results = evaluator.evaluate()
    # Avoid a None return: callers index the result on every rank.
    return results if results is not None else {}
