"""Fingerprint -> plan -> timed probe -> written config: what ``tools/plan.py`` and
``tools/train_net.py --plan`` run."""

import os
from typing import List, Optional, Sequence

from det3d.utils.file_io import write_json_atomic

from .fingerprint import dataset_fingerprint
from .planner import Plan, plan_config
from .probe import measure_inference_time, measure_iteration_time
from .write import planned_config_text, write_planned_config

__all__ = ["plan_dataset", "DEFAULT_BASE"]

DEFAULT_BASE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "configs",
    "Base-RCNN-3D-FPN.yaml",
)


def _thing_classes(names: Sequence[str]) -> List[str]:
    from det3d.data import DatasetCatalog, MetadataCatalog

    classes = None
    for n in names:
        if not MetadataCatalog.get(n).get("thing_classes"):
            DatasetCatalog.get(n)  # COCO-3D json sets its classes when loaded
        c = list(MetadataCatalog.get(n).thing_classes)
        if classes is not None and c != classes:
            raise ValueError(f"training datasets disagree on their classes: {classes} vs {c} ({n})")
        classes = c
    return classes


def plan_dataset(
    train: Sequence[str],
    output: str,
    test: Sequence[str] = (),
    budget_minutes: float = 30.0,
    base: str = DEFAULT_BASE,
    output_dir: str = "",
    probe: bool = True,
    overwrite: bool = False,
    command: Optional[str] = None,
) -> Plan:
    """
    Plans a config for the datasets ``train`` (names or dataset specs) and writes it to
    ``output`` with ``<output stem>.fingerprint.json`` beside it.

    Args:
        test: datasets for ``DATASETS.TEST``.
        budget_minutes: training time the planned schedule fills (``probe`` measures the seconds
            per iteration on this machine; without it ``SOLVER.MAX_ITER`` is the base's).
        base: the ``_BASE_`` config.
        output_dir: ``OUTPUT_DIR`` of the planned config (default ``output/<output stem>``).
        probe: measure on this machine the seconds of a training iteration (``MAX_ITER``) and of
            inference on a volume in float32 and under autocast (``TEST.AMP``).
        command: how to re-plan, for the file's header.

    Raises:
        FileExistsError: ``output`` exists and not ``overwrite`` (checked before any work).
    """
    from det3d.config import get_cfg
    from det3d.data import register_dataset_specs
    from det3d.data.build import get_detection_dataset_dicts

    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    if not os.path.isfile(base):
        raise FileNotFoundError(f"base config {base}: no such file")
    register_dataset_specs(list(train) + list(test))
    records = get_detection_dataset_dicts(list(train))
    fp = dataset_fingerprint(records)
    classes = _thing_classes(train)
    plan = plan_config(fp, num_classes=len(classes))
    stem = os.path.splitext(os.path.basename(output))[0]
    extra = {
        "DATASETS.TRAIN": list(train),
        "DATASETS.TEST": list(test),
        "OUTPUT_DIR": output_dir or os.path.join("output", stem),
    }
    if probe:
        cfg = get_cfg()
        cfg.merge_from_file(base)
        plan.apply(cfg)
        cfg.DATASETS.TRAIN = tuple(train)
        seconds = measure_iteration_time(cfg)
        inference = []
        for amp in (False, True):
            cfg.TEST.AMP.ENABLED = amp
            inference.append(measure_inference_time(cfg))
        plan = plan_config(
            fp,
            num_classes=len(classes),
            seconds_per_iter=seconds,
            budget_minutes=budget_minutes,
            inference_seconds=tuple(inference),
        )
    base_rel = os.path.relpath(os.path.abspath(base), os.path.dirname(os.path.abspath(output)))
    header = (
        f"Planned by det3d.planning from {len(records)} training volumes of {', '.join(train)}\n"
        f"({fp['objects']['count']} objects, classes {classes}). Each value's comment says why."
    )
    if command:
        header += f"\nRe-plan: {command}"
    text = planned_config_text(plan, base_rel, header, extra)
    write_planned_config(output, text, overwrite=overwrite)
    write_json_atomic(os.path.splitext(output)[0] + ".fingerprint.json", fp)
    return plan
