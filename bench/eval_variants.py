"""
A trained model evaluated under several test-time settings, side by side: the scores of its label
volumes and the seconds per volume, on each dataset named, against the first setting.

    python bench/eval_variants.py --run RUN_DIR --datasets toy3d_test toy3d_train \\
        --variant objectness MODEL.ROI_HEADS.LABELS_IOU_POWER 0.0 \\
        --variant iou MODEL.ROI_HEADS.LABELS_IOU_POWER 1.0 [--output output/eval_variants]
        [--threads 1]

``RUN_DIR`` is a training run's folder (``config.yaml`` and ``model_final.pth``). Each
``--variant NAME KEY VALUE [KEY VALUE ...]`` is a set of config overrides; every dataset is
evaluated under each variant in turn by ``tools/train_net.py --eval-only`` into
``<output>/<dataset>/<NAME>`` (a folder that exists is an error: results are never replaced).
Prints, per dataset and variant, SEG, F1@0.5, precision and recall at IoU 0.5, mask AP, the pure
compute seconds per volume that the evaluation logged, and the SEG change against the first
variant. Only what the overrides change differs between the rows: the weights are the same.
"""

import argparse
import os
import subprocess
import sys
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench", "peers"))

from det3d_part import inference_seconds_per_volume  # noqa: E402  (bench/peers/det3d_part.py)
from score import read_scores  # noqa: E402  (bench/peers/score.py)

from det3d.data.datasets import dataset_folder_name  # noqa: E402
from det3d.utils.file_io import read_json  # noqa: E402


def check_run(run: str) -> None:
    """Exits naming the file a finished training run folder lacks."""
    for name in ("config.yaml", "model_final.pth"):
        if not os.path.isfile(os.path.join(run, name)):
            raise SystemExit(f"--run {run}: no {name}; not a finished training run")


def evaluate(run: str, dataset: str, overrides: List[str], out: str, threads: int) -> dict:
    """
    Runs one ``--eval-only`` of ``run``'s final weights on ``dataset`` with the config overrides
    (``[KEY, VALUE, ...]``) into ``out``, and reads back its scores (``SEG``, ``f1@0.5``, ...,
    ``mask AP``) and ``s/vol``.
    """
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists; choose another --output (results are never replaced)")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--eval-only"]
    cmd += ["--config-file", os.path.join(run, "config.yaml")]
    cmd += ["MODEL.WEIGHTS", os.path.join(run, "model_final.pth"), "OUTPUT_DIR", out]
    cmd += ["DATASETS.TEST", f"('{dataset}',)", *overrides]
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


def parse_variants(specs: List[List[str]]) -> Dict[str, List[str]]:
    """``[[NAME, KEY, VALUE, ...], ...]`` -> ``{NAME: [KEY, VALUE, ...]}``, checked."""
    variants = {}
    for spec in specs:
        name, overrides = spec[0], spec[1:]
        if not overrides or len(overrides) % 2:
            raise SystemExit(f"--variant {' '.join(spec)}: give NAME then KEY VALUE pairs")
        if name in variants or os.sep in name:
            raise SystemExit(f"--variant {name}: names must be unique folder names")
        variants[name] = overrides
    if len(variants) < 2:
        raise SystemExit("give at least two --variant settings to compare")
    return variants


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a training run's OUTPUT_DIR")
    p.add_argument("--datasets", nargs="+", required=True, help="registered dataset names")
    p.add_argument(
        "--variant",
        nargs="+",
        action="append",
        required=True,
        metavar="NAME KEY VALUE",
        help="a name and its config overrides; the first variant is the reference",
    )
    p.add_argument("--output", default="output/eval_variants")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the evaluations")
    args = p.parse_args()
    check_run(args.run)
    variants = parse_variants(args.variant)
    rows = []
    for dataset in args.datasets:
        for name, overrides in variants.items():
            out = os.path.join(args.output, dataset, name)
            rows.append((dataset, name, evaluate(args.run, dataset, overrides, out, args.threads)))
    reference = next(iter(variants))
    print(f"{args.run}, {args.threads} torch thread(s); reference: {reference}")
    for name, overrides in variants.items():
        print(f"  {name}: {' '.join(overrides)}")
    columns = ["dataset", "variant", "SEG", "F1@0.5", "precision", "recall", "mask AP"]
    columns += ["s / volume", "SEG change"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for dataset, name, s in rows:
        base = next(r for d, n, r in rows if d == dataset and n == reference)
        print(
            f"| {dataset} | {name} | {s['SEG']:.4f} | {s['f1@0.5']:.3f} | "
            f"{s['precision@0.5']:.3f} | {s['recall@0.5']:.3f} | "
            f"{s.get('mask AP', float('nan')):.1f} | {s['s/vol']:.2f} | "
            f"{s['SEG'] - base['SEG']:+.4f} |"
        )


if __name__ == "__main__":
    main()
