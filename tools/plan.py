#!/usr/bin/env python
"""
Plans a config for a dataset from its fingerprint, as nnU-Net and nnDetection plan theirs:

.. code-block:: none

    python tools/plan.py --train folder:images=data/train/images,labels=data/train/labels \\
        --test folder:images=data/test/images,labels=data/test/labels --output configs/my_data.yaml
    python tools/train_net.py --config-file configs/my_data.yaml

``--train`` / ``--test`` take registered dataset names (``toy3d_train``) or dataset specs
(``folder:``, ``ctc:``, ``coco3d:``; see ``det3d/data/datasets/specs.py``). The planner reads the
training volumes (spacing, volume and object sizes per axis, objects per volume, touching
objects, intensities), writes ``<output>`` (every planned value with the reason in a comment)
and ``<output>.fingerprint.json``, then measures the planned model's seconds per iteration on
this machine and sets the number of iterations that fills ``--budget-minutes``.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from det3d.config import get_cfg  # noqa: E402
from det3d.data import DatasetCatalog, MetadataCatalog, register_dataset_specs  # noqa: E402
from det3d.data.build import get_detection_dataset_dicts  # noqa: E402
from det3d.planning import (  # noqa: E402
    dataset_fingerprint,
    measure_iteration_time,
    plan_config,
    planned_config_text,
    write_planned_config,
)
from det3d.utils.file_io import write_json_atomic  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _classes(names):
    classes = None
    for n in names:
        DatasetCatalog.get(n) if not MetadataCatalog.get(n).get("thing_classes") else None
        c = list(MetadataCatalog.get(n).thing_classes)
        if classes is not None and c != classes:
            raise ValueError(f"--train datasets disagree on their classes: {classes} vs {c} ({n})")
        classes = c
    return classes


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--train", nargs="+", required=True, help="training dataset names or specs")
    p.add_argument("--test", nargs="*", default=[], help="evaluation dataset names or specs")
    p.add_argument("--output", required=True, help="the config file to write (.yaml)")
    p.add_argument("--budget-minutes", type=float, default=30.0, help="training time to fill")
    p.add_argument("--no-probe", action="store_true", help="do not time the model (no MAX_ITER)")
    p.add_argument("--base", default=os.path.join(ROOT, "configs", "Base-RCNN-3D-FPN.yaml"))
    p.add_argument("--output-dir", default="", help="OUTPUT_DIR of the planned config")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = p.parse_args(argv)
    if os.path.exists(args.output) and not args.overwrite:
        p.error(f"{args.output} exists; pass --overwrite to replace it")
    if not os.path.isfile(args.base):
        p.error(f"--base {args.base}: no such config file")
    register_dataset_specs(args.train + args.test)

    records = get_detection_dataset_dicts(args.train)
    fp = dataset_fingerprint(records)
    classes = _classes(args.train)
    plan = plan_config(fp, num_classes=len(classes))
    stem = os.path.splitext(os.path.basename(args.output))[0]
    extra = {
        "DATASETS.TRAIN": list(args.train),
        "DATASETS.TEST": list(args.test),
        "OUTPUT_DIR": args.output_dir or os.path.join("output", stem),
    }
    cfg = get_cfg()
    cfg.merge_from_file(args.base)
    plan.apply(cfg)
    for k, v in extra.items():
        cfg.merge_from_list([k, str(tuple(v)) if isinstance(v, list) else v])
    if not args.no_probe:
        seconds = measure_iteration_time(cfg)
        plan = plan_config(
            fp,
            num_classes=len(classes),
            seconds_per_iter=seconds,
            budget_minutes=args.budget_minutes,
        )
    base_rel = os.path.relpath(
        os.path.abspath(args.base), os.path.dirname(os.path.abspath(args.output))
    )
    header = (
        f"Planned by tools/plan.py from {len(records)} training volumes of {', '.join(args.train)}\n"
        f"({fp['objects']['count']} objects, classes {classes}). Each value's comment says why.\n"
        f"Re-plan: python tools/plan.py --train {' '.join(args.train)} "
        f"{'--test ' + ' '.join(args.test) + ' ' if args.test else ''}--output {args.output} "
        f"--budget-minutes {args.budget_minutes:g} --overwrite"
    )
    text = planned_config_text(plan, base_rel, header, extra)
    write_planned_config(args.output, text, overwrite=args.overwrite)
    fp_path = os.path.splitext(args.output)[0] + ".fingerprint.json"
    write_json_atomic(fp_path, fp)
    print(plan.report())
    print(f"\nWrote {args.output} and {fp_path}")
    print(f"Train: python tools/train_net.py --config-file {args.output}")
    return plan


if __name__ == "__main__":
    main()
