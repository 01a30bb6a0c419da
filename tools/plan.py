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
objects, intensities), measures the planned model's seconds per iteration and its inference in
float32 and under autocast on this machine, and writes ``<output>`` (every planned value with the
reason in a comment; training fills 90% of ``--budget-minutes``: ``MAX_ITER`` is the probe's
estimate and the run re-fits it to its own speed; ``TEST.AMP`` where autocast infers faster) and
``<output stem>.fingerprint.json``.
``tools/train_net.py --plan`` does the same into its ``OUTPUT_DIR`` and then trains.
"""

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from det3d.planning import DEFAULT_BASE, plan_dataset  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--train", nargs="+", required=True, help="training dataset names or specs")
    p.add_argument("--test", nargs="*", default=[], help="evaluation dataset names or specs")
    p.add_argument("--output", required=True, help="the config file to write (.yaml)")
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=30.0,
        help="time budget: training fills 90%% of it (SOLVER.TIME_BUDGET_MINUTES), then evaluation",
    )
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="do not time the model (no MAX_ITER, no SOLVER.TIME_BUDGET_MINUTES, no TEST.AMP)",
    )
    p.add_argument("--base", default=DEFAULT_BASE, help="the _BASE_ config")
    p.add_argument("--output-dir", default="", help="OUTPUT_DIR of the planned config")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = "python tools/plan.py " + " ".join(shlex.quote(a) for a in argv)
    if "--overwrite" not in argv:
        command += " --overwrite"
    plan = plan_dataset(
        args.train,
        args.output,
        test=args.test,
        budget_minutes=args.budget_minutes,
        base=args.base,
        output_dir=args.output_dir,
        probe=not args.no_probe,
        overwrite=args.overwrite,
        command=command,
    )
    print(plan.report())
    print(f"\nWrote {args.output} and {os.path.splitext(args.output)[0]}.fingerprint.json")
    print(f"Train: python tools/train_net.py --config-file {args.output}")
    return plan


if __name__ == "__main__":
    main()
