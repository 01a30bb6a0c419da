"""The figures of MODEL_ZOO.md's 2.5D table: accuracy, inference time and peak memory per volume
of trained 2.5D (SliceFusionRCNN) and 3D (GeneralizedRCNN3D) models on the synthetic splits.

    python bench/slice_fusion.py --runs RUNS [--rows none,conv,...] [--threads 1]
    python bench/slice_fusion.py --row NAME CONFIG WEIGHTS [--row ...]

``--runs RUNS`` takes the zoo's rows (:data:`ZOO_ROWS`: name -> config) whose weights are at
``RUNS/<name>/model_final.pth`` (as ``bench/train_synthetic.py --full --output-dir RUNS/<name>``
writes them) and the training times that run appended to ``RUNS/results.jsonl``. For each row it:

* evaluates the model on the config's test split with the config's evaluators (mask AP and AP50
  from COCO3DEvaluator, F1@0.5 from InstanceMatchingEvaluator, SEG from SEGEvaluator), timing
  each volume's inference (mean seconds per volume, after the first);
* measures the peak memory of inference on one volume in a fresh process: the largest resident
  set size (sampled every 2 ms) during a second ``model([volume])`` minus the resident size just
  before it, so it counts what inference adds to a process that holds the model and the volume
  (blocks of 128 KiB and more are mmapped, so freed tensors leave the resident set).

It prints one markdown table. Timings on a shared machine vary with its load: compare rows measured
in one run, on an otherwise idle machine, with the same ``--threads``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

# name -> config (relative to configs/Synthetic), in the table's order
ZOO_ROWS = {
    "3d": "mask_rcnn_R18_FPN_3d_cpu.yaml",
    "none": "slice_fusion_none.yaml",
    "channel_stack": "slice_fusion_channel_stack.yaml",
    "slice_weights": "slice_fusion_slice_weights.yaml",
    "per_level_weights": "slice_fusion_per_level_weights.yaml",
    "windowed_weights": "slice_fusion_windowed_weights.yaml",
    "conv": "slice_fusion_conv.yaml",
    "attention": "slice_fusion_attention.yaml",
    "aniso3d": "mask_rcnn_R18_FPN_3d_cpu_aniso.yaml",
    "none_aniso": "slice_fusion_none_aniso.yaml",
    "conv_aniso": "slice_fusion_conv_aniso.yaml",
}


def _config(path: str, weights: str, opts=()):
    from det3d.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu", *opts])
    cfg.freeze()
    return cfg


def _model(cfg) -> nn.Module:
    from det3d.checkpoint import DetectionCheckpointer
    from det3d.modeling import build_model

    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


class _Timed(nn.Module):
    """Times every call of the model it wraps."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.seconds = []

    def forward(self, inputs):
        start = time.perf_counter()
        out = self.model(inputs)
        self.seconds.append(time.perf_counter() - start)
        return out


def evaluate(cfg) -> dict:
    """Metrics of the config's test split and the mean inference seconds per volume."""
    import train_net

    from det3d.data import build_detection_test_loader
    from det3d.evaluation import inference_on_dataset

    (dataset,) = cfg.DATASETS.TEST
    timed = _Timed(_model(cfg))
    with tempfile.TemporaryDirectory() as out:
        evaluator = train_net.build_evaluator(cfg, dataset, out)
        results = inference_on_dataset(timed, build_detection_test_loader(cfg, dataset), evaluator)
    seconds = timed.seconds[1:] or timed.seconds  # the first call warms up
    return {
        "mask_AP": results["segm"]["AP"],
        "mask_AP50": results["segm"]["AP50"],
        "F1@0.5": results["matching"]["f1@0.5"],
        "SEG": results["seg"]["SEG"],
        "sec_per_volume": sum(seconds) / len(seconds),
    }


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_memory(config: str, weights: str, depth: int = 0) -> dict:
    """
    Peak resident memory that inference on the test split's first volume adds (this process);
    with ``depth``, the volume repeated along z to that many slices.
    """
    from det3d.data import DatasetCatalog, DatasetMapper3D

    cfg = _config(config, weights)
    model = _model(cfg)
    (dataset,) = cfg.DATASETS.TEST
    inputs = [DatasetMapper3D(cfg, False)(DatasetCatalog.get(dataset)[0])]
    if depth:
        image = inputs[0]["image"]
        reps = -(-depth // image.shape[1])
        inputs = [{"image": image.repeat(1, reps, 1, 1)[:, :depth].contiguous()}]
    with torch.no_grad():
        model(inputs)  # warm-up: allocator pools and lazy initialisation are not inference
    import gc

    gc.collect()
    base = _rss_mb()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with torch.no_grad():
        model(inputs)
    done.set()
    thread.join()
    peak[0] = max(peak[0], _rss_mb())
    shape = tuple(inputs[0]["image"].shape)
    return {"peak_mb": peak[0] - base, "rss_before_mb": base, "volume": shape}


def _memory_in_subprocess(config: str, weights: str, threads: int, depth: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--measure-memory", config, weights, "--threads", str(threads)]
    cmd += ["--depth", str(depth)]
    # glibc serves blocks of 128 KiB and more by mmap and unmaps them when freed, so the resident
    # size follows the live tensors instead of keeping freed memory (torch's CPU allocator does
    # not cache)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def _train_minutes(runs: str) -> dict:
    """Training minutes by output dir, from RUNS/results.jsonl (bench/train_synthetic.py --full)."""
    path = os.path.join(runs, "results.jsonl")
    minutes = {}
    if os.path.isfile(path):
        for line in open(path):
            rec = json.loads(line)
            minutes[os.path.basename(rec["config"])] = rec["train_min"]
    return minutes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", default="", help="folder of the zoo's training runs")
    p.add_argument("--rows", default="", help="comma-separated names of ZOO_ROWS (default: all)")
    p.add_argument("--row", nargs=3, action="append", default=[], metavar=("NAME", "CFG", "W"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--measure-memory", nargs=2, metavar=("CONFIG", "WEIGHTS"))
    p.add_argument("--depth", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument(
        "--depth-scan",
        default="",
        help="comma-separated depths: peak memory of each row on its first test volume repeated\n"
        "along z to each depth (does memory grow with the number of slices?)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.measure_memory:
        print(json.dumps(measure_memory(*args.measure_memory, depth=args.depth)))
        return
    rows = [tuple(r) for r in args.row]
    minutes = {}
    if args.runs:
        minutes = _train_minutes(args.runs)
        names = args.rows.split(",") if args.rows else list(ZOO_ROWS)
        for name in names:
            weights = os.path.join(args.runs, name, "model_final.pth")
            if os.path.isfile(weights):
                config = os.path.join(REPO, "configs", "Synthetic", ZOO_ROWS[name])
                rows.append((name, config, weights))
            else:
                print(f"(no weights for row {name!r}: {weights} is missing)", file=sys.stderr)
    header = (
        "| model | test split | mask AP | mask AP50 | F1@0.5 | SEG | train min | s / volume "
        "| peak MB / volume |"
    )
    table = [header, "|" + "---|" * 9]
    for name, config, weights in rows:
        cfg = _config(config, weights)
        metrics = evaluate(cfg)
        mem = _memory_in_subprocess(config, weights, args.threads)
        train = minutes.get(os.path.basename(config))
        table.append(
            f"| {name} | {cfg.DATASETS.TEST[0]} | {metrics['mask_AP']:.1f} | "
            f"{metrics['mask_AP50']:.1f} | {metrics['F1@0.5']:.3f} | {metrics['SEG']:.3f} | "
            f"{'' if train is None else f'{train:.1f}'} | {metrics['sec_per_volume']:.2f} | "
            f"{mem['peak_mb']:.0f} |"
        )
        print(table[-1], file=sys.stderr, flush=True)
    print(f"torch threads: {args.threads}")
    print("\n".join(table))
    if args.depth_scan:
        depths = [int(d) for d in args.depth_scan.split(",")]
        print("\npeak MB of inference on one volume repeated along z (same H, W):\n")
        print("| model | " + " | ".join(f"{d} slices" for d in depths) + " |")
        print("|---|" + "---|" * len(depths))
        for name, config, weights in rows:
            mb = [_memory_in_subprocess(config, weights, args.threads, d) for d in depths]
            mb = [m["peak_mb"] for m in mb]
            print(f"| {name} | " + " | ".join(f"{m:.0f}" for m in mb) + " |", flush=True)


if __name__ == "__main__":
    main()
