"""
Evaluators chosen by name from the config: ``TEST.EVALUATORS`` lists names in
:data:`EVALUATOR_REGISTRY`, each built with its ``from_config(cfg, dataset_name, output_dir)``.

A project adds its own evaluator the way it adds a model part:

.. code-block:: python

    @EVALUATOR_REGISTRY.register()
    class MyEvaluator(DatasetEvaluator):
        @classmethod
        def from_config(cls, cfg, dataset_name, output_dir=None):
            return cls(dataset_name, output_dir=output_dir)

    cfg.TEST.EVALUATORS = ["coco3d", "MyEvaluator"]
"""

import os
from typing import Optional

from fvcore.common.registry import Registry

from .coco3d_evaluation import COCO3DEvaluator
from .evaluator import DatasetEvaluator, DatasetEvaluators
from .matching import InstanceMatchingEvaluator
from .seg import SEGEvaluator

__all__ = ["EVALUATOR_REGISTRY", "EVALUATOR_ALIASES", "build_evaluator"]

EVALUATOR_REGISTRY = Registry("EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = """
Registry of dataset evaluators (``DatasetEvaluator`` subclasses), named in ``TEST.EVALUATORS``.
Each is built with ``from_config(cfg, dataset_name, output_dir=None)``.
"""
for _cls in (COCO3DEvaluator, InstanceMatchingEvaluator, SEGEvaluator):
    EVALUATOR_REGISTRY.register(_cls)

# The short names det3d's configs use.
EVALUATOR_ALIASES = {
    "coco3d": "COCO3DEvaluator",
    "matching": "InstanceMatchingEvaluator",
    "seg": "SEGEvaluator",
}


def build_evaluator(
    cfg, dataset_name: str, output_dir: Optional[str] = None
) -> Optional[DatasetEvaluator]:
    """
    The evaluators named in ``cfg.TEST.EVALUATORS`` for one dataset.

    Args:
        output_dir: where they write their files; default ``OUTPUT_DIR/inference/<dataset>`` (a
            dataset spec's name made safe for the file system,
            ``det3d.data.datasets.dataset_folder_name``).

    Returns:
        one evaluator, a :class:`DatasetEvaluators` of several, or None when the list is empty.

    Raises:
        ValueError naming ``TEST.EVALUATORS`` and the known names, for a name not registered.
    """
    if output_dir is None:
        from det3d.data.datasets import dataset_folder_name  # a dataset spec made file-safe

        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_folder_name(dataset_name))
    evaluators = []
    for name in cfg.TEST.EVALUATORS:
        key = EVALUATOR_ALIASES.get(name, name)
        if key not in EVALUATOR_REGISTRY:
            known = sorted(EVALUATOR_ALIASES) + sorted(
                k for k, _ in EVALUATOR_REGISTRY if k not in EVALUATOR_ALIASES.values()
            )
            raise ValueError(f"Unknown evaluator {name!r} in TEST.EVALUATORS; choose from {known}")
        evaluators.append(EVALUATOR_REGISTRY.get(key).from_config(cfg, dataset_name, output_dir))
    if not evaluators:
        return None
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
