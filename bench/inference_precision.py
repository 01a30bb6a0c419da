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
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench", "peers"))

from det3d_part import inference_seconds_per_volume  # noqa: E402  (bench/peers/det3d_part.py)
from score import read_scores  # noqa: E402  (bench/peers/score.py)

from det3d.data.datasets import dataset_folder_name  # noqa: E402
from det3d.utils.file_io import read_json  # noqa: E402

PRECISIONS = {"float32": "False", "autocast": "True"}


def evaluate(run: str, dataset: str, amp: str, out: str, threads: int) -> dict:
    """Runs one ``--eval-only`` into ``out`` and reads back its scores and time per volume."""
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists; choose another --output (results are never replaced)")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--eval-only"]
    cmd += ["--config-file", os.path.join(run, "config.yaml")]
    cmd += ["MODEL.WEIGHTS", os.path.join(run, "model_final.pth"), "OUTPUT_DIR", out]
    cmd += ["DATASETS.TEST", f"('{dataset}',)", "TEST.AMP.ENABLED", amp]
    os.makedirs(out)
    with open(os.path.join(out, "bench.log"), "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        raise RuntimeError(f"evaluation of {dataset} failed (exit {rc}); see {out}/bench.log")
    log = os.path.join(out, "log.txt")
    with open(log) as f:
        seconds = inference_seconds_per_volume(f.read())
    if seconds is None:
        raise ValueError(f"{log}: no 'inference pure compute time' line; did the evaluation run?")
    folder = os.path.join(out, "inference", dataset_folder_name(dataset))
    scores = read_scores(folder)
    coco = os.path.join(folder, "coco3d_results.json")
    if os.path.isfile(coco):
        segm = read_json(coco, "COCO-3D results").get("segm", {}).get("metrics", {})
        scores["mask AP"] = segm.get("AP", float("nan"))
    scores["s/vol"] = seconds
    return scores


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a training run's OUTPUT_DIR")
    p.add_argument("--datasets", nargs="+", required=True, help="registered dataset names")
    p.add_argument("--output", default="output/inference_precision")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the evaluations")
    args = p.parse_args()
    for name in ("config.yaml", "model_final.pth"):
        if not os.path.isfile(os.path.join(args.run, name)):
            raise SystemExit(f"--run {args.run}: no {name}; not a finished training run")
    rows = []
    for dataset in args.datasets:
        for precision, amp in PRECISIONS.items():
            out = os.path.join(args.output, dataset, precision)
            rows.append((dataset, precision, evaluate(args.run, dataset, amp, out, args.threads)))
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
