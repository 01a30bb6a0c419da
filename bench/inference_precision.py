"""
A trained model's inference in float32 and under autocast (``TEST.AMP``), side by side: the
scores of its label volumes and the seconds per volume, on each dataset named.

    python bench/inference_precision.py --run RUN_DIR --datasets toy3d_test toy3d_train
        [--output output/inference_precision] [--threads 1]

``RUN_DIR`` is a training run's folder (``config.yaml`` and ``model_final.pth``). Each dataset is
evaluated twice by ``tools/train_net.py --eval-only`` (``TEST.AMP.ENABLED False``, then
``True``), alternating, into ``<output>/<dataset>/<float32|autocast>``. Prints, per dataset and
precision, SEG, F1@0.5, mask AP and the pure compute seconds per volume that the evaluation
logged (first volumes left out as warm-up), and the speed-up. The planner turns ``TEST.AMP`` on
where its own probe measures autocast faster (det3d/planning/planner.py, rule 7); this bench is
the check that doing so leaves the scores where they were.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from eval_variants import check_run, evaluate  # noqa: E402  (bench/eval_variants.py)

PRECISIONS = {"float32": "False", "autocast": "True"}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a training run's OUTPUT_DIR")
    p.add_argument("--datasets", nargs="+", required=True, help="registered dataset names")
    p.add_argument("--output", default="output/inference_precision")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the evaluations")
    args = p.parse_args()
    check_run(args.run)
    rows = []
    for dataset in args.datasets:
        for precision, amp in PRECISIONS.items():
            out = os.path.join(args.output, dataset, precision)
            scores = evaluate(args.run, dataset, ["TEST.AMP.ENABLED", amp], out, args.threads)
            rows.append((dataset, precision, scores))
    print(f"{args.run}, {args.threads} torch thread(s)")
    print("| dataset | precision | SEG | F1@0.5 | mask AP | s / volume | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for dataset, precision, s in rows:
        base = next(r for d, p, r in rows if d == dataset and p == "float32")
        print(
            f"| {dataset} | {precision} | {s['SEG']:.4f} | {s['f1@0.5']:.3f} | "
            f"{s.get('mask AP', float('nan')):.1f} | {s['s/vol']:.2f} | "
            f"{base['s/vol'] / s['s/vol']:.2f}x |"
        )


if __name__ == "__main__":
    main()
