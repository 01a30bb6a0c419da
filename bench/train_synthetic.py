"""Training speed, memory and accuracy of a det3d config on the synthetic volumes.

    python bench/train_synthetic.py [--config-file configs/Synthetic/mask_rcnn_R18_FPN_3d_cpu.yaml]
        [--iters 30] [--warmup 5] [--threads 2] [--output bench.json] [KEY VALUE ...]
    python bench/train_synthetic.py --full [--config-file ...] [--output-dir DIR] [KEY VALUE ...]

``--full`` trains the config's whole schedule, evaluates it on its test split and prints the
training wall-clock time and a table of each metric against the target det3d holds the CPU demo
model to (mask AP50 >= 90, SEG >= 0.8 within a 30-minute CPU budget); it exits 1 when a target
or the budget is missed.

Without ``--full``:
Trains ``--iters`` iterations (no evaluation, no checkpoints) through ``DefaultTrainer`` with the
config's model, loader and solver, and prints one JSON line: the median seconds per iteration
(after ``--warmup`` iterations), the median data-loading time, iterations per second, the
estimated time of the config's full ``SOLVER.MAX_ITER`` schedule, the process's peak resident
memory and, on CUDA, the peak allocated GPU memory. Timings on a shared machine vary with its
load: compare runs made on the same, otherwise idle, machine.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import train_net  # noqa: E402

from det3d.engine import default_argument_parser  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config-file",
        default=os.path.join(REPO, "configs", "Synthetic", "mask_rcnn_R18_FPN_3d_cpu.yaml"),
    )
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--output", default="", help="also append the JSON line to this file")
    p.add_argument("--full", action="store_true", help="train the whole schedule and evaluate")
    p.add_argument("--output-dir", default="", help="with --full: where the run writes")
    p.add_argument("--budget-min", type=float, default=30.0, help="with --full: training budget")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.iters <= args.warmup:
        p.error("--iters must be larger than --warmup")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.full:
        return full_run(args)

    with tempfile.TemporaryDirectory() as out:
        run_args = default_argument_parser().parse_args(["--config-file", args.config_file])
        cfg_full = train_net.get_cfg()
        cfg_full.merge_from_file(args.config_file)
        cfg_full.merge_from_list(args.opts)
        run_args.opts = list(args.opts) + [
            "OUTPUT_DIR", out,
            "SOLVER.MAX_ITER", str(args.iters),
            "SOLVER.STEPS", "()",
            "SOLVER.CHECKPOINT_PERIOD", str(10**9),
            "SOLVER.LOG_PERIOD", "1",
            "DATASETS.TEST", "()",
        ]  # fmt: skip
        cfg = train_net.setup(run_args)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer = train_net.Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        times = [v for v, it in trainer.storage.history("time").values() if it >= args.warmup]
        data = [v for v, it in trainer.storage.history("data_time").values() if it >= args.warmup]

    sec_per_iter = statistics.median(times)
    result = {
        "config": os.path.relpath(args.config_file, REPO),
        "device": cfg.MODEL.DEVICE,
        "threads": torch.get_num_threads(),
        "iters_timed": len(times),
        "sec_per_iter": round(sec_per_iter, 4),
        "data_sec_per_iter": round(statistics.median(data), 4),
        "iters_per_sec": round(1.0 / sec_per_iter, 3),
        "full_schedule_iters": cfg_full.SOLVER.MAX_ITER,
        "full_schedule_min": round(cfg_full.SOLVER.MAX_ITER * sec_per_iter / 60, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if torch.cuda.is_available():
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    line = json.dumps(result)
    print(line)
    if args.output:
        with open(args.output, "a") as f:
            f.write(line + "\n")
    return result


# (task, metric, target)
TARGETS = [("segm", "AP50", 90.0), ("seg", "SEG", 0.8)]
REPORTED = [
    ("bbox", "AP"),
    ("bbox", "AP50"),
    ("segm", "AP"),
    ("segm", "AP50"),
    ("segm", "AP75"),
    ("matching", "precision@0.5"),
    ("matching", "recall@0.5"),
    ("matching", "f1@0.5"),
    ("matching", "panoptic_quality@0.5"),
    ("seg", "SEG"),
]


def full_run(args) -> dict:
    """Trains the whole schedule, evaluates, prints time and metrics against the targets."""
    out = args.output_dir or tempfile.mkdtemp(prefix="det3d_bench_")
    run_args = default_argument_parser().parse_args(["--config-file", args.config_file])
    run_args.opts = list(args.opts) + ["OUTPUT_DIR", out]
    cfg = train_net.setup(run_args)
    # Train with no test split (so the clock holds training only), then evaluate the final model.
    train_cfg = cfg.clone()
    train_cfg.defrost()
    train_cfg.DATASETS.TEST = ()
    train_cfg.freeze()
    trainer = train_net.Trainer(train_cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    train_min = (time.perf_counter() - start) / 60
    start = time.perf_counter()
    results = train_net.Trainer.test(cfg, trainer.model)
    eval_s = time.perf_counter() - start
    targets = {(t, k): v for t, k, v in TARGETS}
    rows = [f"{'metric':<32}{'value':>10}{'target':>10}  ok"]
    passed = True
    for task, key in REPORTED:
        value = results.get(task, {}).get(key, float("nan"))
        target = targets.get((task, key))
        ok = "" if target is None else ("yes" if value >= target else "NO")
        passed &= ok != "NO"
        rows.append(
            f"{task + '/' + key:<32}{value:>10.4f}{'' if target is None else target:>10}  {ok}"
        )
    within = train_min <= args.budget_min
    passed &= within
    print(
        f"config {os.path.relpath(args.config_file, REPO)}, {cfg.SOLVER.MAX_ITER} iterations, "
        f"{torch.get_num_threads()} threads, evaluated on {', '.join(cfg.DATASETS.TEST)}, "
        f"output {out}"
    )
    print(
        f"training {train_min:.1f} min wall clock (budget {args.budget_min:g} min: "
        f"{'within' if within else 'EXCEEDED'}); evaluation {eval_s:.0f} s"
    )
    print("\n".join(rows))
    if args.output:
        with open(args.output, "a") as f:
            record = {"config": args.config_file, "train_min": train_min, "results": results}
            f.write(json.dumps(record) + "\n")
    if not passed:
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
