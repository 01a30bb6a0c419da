"""
Peak memory of every shipped config: one training iteration (at the config's
``SOLVER.IMS_PER_BATCH``) and one inference, each on 64x128x128 volumes and each in a fresh
process (``det3d.utils.memory`` says exactly what is measured). Prints a table with pass/fail
against the CPU budget (8 GiB); GPU configs (``MODEL.DEVICE`` cuda) are also checked against a GPU
budget (40 GiB) with an estimate from the bytes of live tensors measured on the CPU. Exits 1 when a
config fails.

    python bench/memory.py                                    # configs/**/*.yaml + get_cfg()
    python bench/memory.py --configs configs/Synthetic/*.yaml --input-size 64 128 128
    python bench/memory.py --switches --configs configs/Base-RCNN-3D-FPN.yaml   # switch savings

Configs are found by globbing ``configs/**/*.yaml``, so new ones are measured without editing
this file; a config that does not load or build is reported as an error (and fails).

GPU estimate (no GPU needed): the training step runs on the CPU under ``torch.profiler``, whose
memory timeline gives the peak of bytes held by live tensors; those are the tensors a GPU step
allocates (``SOLVER.AMP`` autocasts to bfloat16 on the CPU where the GPU uses float16: the same
sizes). The estimate is ``tensor_peak * 1.3 + 1 GiB`` (caching-allocator slack, CUDA context and
cuDNN workspaces), for one GPU holding the whole ``IMS_PER_BATCH`` (with N GPUs each holds 1/N of
the batch's activations).

``--switches`` measures each memory-saving switch against the config as it is: backbone
activation checkpointing and AMP (bfloat16 on the CPU) in training, no RoI chunking
(``TEST.ROI_CHUNK_SIZE 0``, the cost of turning the default off) and AMP in inference.
"""

import argparse
import glob
import os
import sys
from typing import List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from det3d.config import get_cfg  # noqa: E402
from det3d.utils.memory import (  # noqa: E402
    DEFAULT_INPUT_SIZE,
    MemoryResult,
    estimate_gpu_gb,
    measure_memory,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = "(defaults: get_cfg())"

# (name, mode, overrides) of each switch measured by --switches
SWITCHES = [
    ("MODEL.BACKBONE.CHECKPOINT True", "train", ["MODEL.BACKBONE.CHECKPOINT", "True"]),
    ("SOLVER.AMP.ENABLED True (bf16)", "train", ["SOLVER.AMP.ENABLED", "True"]),
    ("TEST.ROI_CHUNK_SIZE 0 (off)", "inference", ["TEST.ROI_CHUNK_SIZE", "0"]),
    ("TEST.AMP.ENABLED True (bf16)", "inference", ["TEST.AMP.ENABLED", "True"]),
]


def discover_configs(root: str = ROOT) -> List[str]:
    """Every ``configs/**/*.yaml`` under ``root``, sorted."""
    return sorted(glob.glob(os.path.join(root, "configs", "**", "*.yaml"), recursive=True))


def _name(path: Optional[str]) -> str:
    if path is None:
        return DEFAULTS
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def _load(path: Optional[str]):
    cfg = get_cfg()
    if path is not None:
        cfg.merge_from_file(path)
    return cfg


def _gb(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cell(r: MemoryResult) -> str:
    if r.exceeded:
        return f">{r.peak_rss:.0f} (killed)"
    if r.error:
        return "error"
    return _gb(r.peak_rss)


def measure_config(path, input_size, cpu_gb, gpu_gb, kill_gb) -> Tuple[List[str], bool, List[str]]:
    """One table row, whether it passes, and error messages."""
    name = _name(path)
    try:
        cfg = _load(path)
    except Exception as e:  # a config that does not load fails, with its reason
        return [name, "-", "-", "-", "-", "-", "FAIL"], False, [f"{name}: {e}"]
    on_gpu = str(cfg.MODEL.DEVICE).startswith("cuda")
    train = measure_memory(path, "train", input_size, limit_gb=kill_gb)
    infer = measure_memory(path, "inference", input_size, limit_gb=kill_gb)
    errors = [f"{name} ({r.mode}): {r.error}" for r in (train, infer) if r.error]
    ok = train.ok and infer.ok and train.peak_rss < cpu_gb and infer.peak_rss < cpu_gb
    gpu = "-"
    if on_gpu:
        t = measure_memory(path, "train", input_size, limit_gb=kill_gb, tensor_peak=True)
        if t.ok:
            est = estimate_gpu_gb(t.tensor_peak)
            gpu = f"{est:.1f} ({t.tensor_peak:.2f})"
            ok = ok and est < gpu_gb
        else:
            ok = False
            errors.append(f"{name} (GPU estimate): {t.error or 'killed'}")
    row = [
        name,
        str(cfg.SOLVER.IMS_PER_BATCH),
        _cell(train),
        _cell(infer),
        _gb(train.baseline_rss),
        gpu,
        "pass" if ok else "FAIL",
    ]
    return row, ok, errors


def measure_switches(path, input_size, kill_gb) -> List[List[str]]:
    """Rows of switch savings for one config: peak with and without, model memory saved."""
    name = _name(path)
    base = {
        m: measure_memory(path, m, input_size, limit_gb=kill_gb) for m in ("train", "inference")
    }
    rows = []
    for label, mode, opts in SWITCHES:
        r = measure_memory(path, mode, input_size, opts=opts, limit_gb=kill_gb)
        ref = base[mode]
        saved = "-"
        if r.ok and ref.ok:
            # saving of the model's own memory: peak minus the process before the model
            model_ref = ref.peak_rss - ref.baseline_rss
            model_new = r.peak_rss - r.baseline_rss
            gain = model_ref - model_new
            saved = f"{gain:+.2f} ({100 * gain / model_ref:+.0f}%)"
        time = "-" if not (r.ok and ref.ok) else f"{r.seconds / ref.seconds:.2f}x"
        rows.append([name, mode, label, _cell(ref), _cell(r), saved, time])
    return rows


def format_table(headers: Sequence[str], rows: List[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), "-+-".join("-" * w for w in widths)]
    return "\n".join(lines + [fmt.format(*r) for r in rows])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="*", default=None, help="default: configs/**/*.yaml")
    parser.add_argument("--no-defaults", action="store_true", help="skip get_cfg()'s row")
    parser.add_argument("--input-size", type=int, nargs=3, default=list(DEFAULT_INPUT_SIZE))
    parser.add_argument("--cpu-gb", type=float, default=8.0, help="CPU budget (GiB)")
    parser.add_argument("--gpu-gb", type=float, default=40.0, help="GPU budget (GiB)")
    parser.add_argument(
        "--kill-gb", type=float, default=12.0, help="kill a measurement above this RSS (GiB)"
    )
    parser.add_argument("--switches", action="store_true", help="measure the switches' savings")
    args = parser.parse_args(argv)

    paths = discover_configs() if args.configs is None else list(args.configs)
    if not args.no_defaults:
        paths = [None] + paths
    size = "x".join(str(s) for s in args.input_size)
    if args.switches:
        rows = []
        for p in paths:
            rows += measure_switches(p, args.input_size, args.kill_gb)
            print(f"measured {_name(p)}", file=sys.stderr, flush=True)
        headers = ["config", "mode", "switch", "peak GiB", "with switch", "saved GiB", "time"]
        print(f"Memory-saving switches, {size} input (peak RSS; saved = model memory saved)")
        print(format_table(headers, rows))
        return 0
    rows, failed, errors = [], [], []
    for p in paths:
        row, ok, errs = measure_config(p, args.input_size, args.cpu_gb, args.gpu_gb, args.kill_gb)
        rows.append(row)
        errors += errs
        if not ok:
            failed.append(row[0])
        print(f"measured {row[0]}: {row[-1]}", file=sys.stderr, flush=True)
    headers = [
        "config",
        "batch",
        "train peak GiB",
        "infer peak GiB",
        "baseline GiB",
        "GPU est. GiB (tensors)",
        f"< {args.cpu_gb:g} GiB",
    ]
    print(
        f"Peak memory (RSS) of one training iteration and one inference on {size} volumes, "
        "each in a fresh process"
    )
    print(format_table(headers, rows))
    for e in errors:
        print("error:", e)
    print(
        f"{len(rows) - len(failed)} of {len(rows)} configs pass"
        + (f"; FAIL: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
