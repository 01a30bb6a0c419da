"""
Peak memory of one training iteration and of one inference of a config, each measured in a fresh
subprocess (used by ``bench/memory.py`` and ``tools/analyze_model.py --memory``).

What is measured, on CPU (``MODEL.DEVICE`` is set to "cpu", ``MODEL.WEIGHTS`` ignored):

* ``train``: the model is built, then one ``SimpleTrainer`` step (``AMPTrainer`` with
  ``SOLVER.AMP.ENABLED``; bfloat16 on CPU) runs on ``SOLVER.IMS_PER_BATCH`` synthetic volumes of
  ``input_size`` voxels (20 objects of 3 shapes each): forward, backward and the configured
  optimizer's step, so parameters, gradients and optimizer state count. (``SliceFusionRCNN``,
  whose batch counts slice windows: ``IMS_PER_BATCH / TRAIN_SLICES_PER_VOLUME`` volumes, so that
  it trains on ``IMS_PER_BATCH`` slices.) 16 jittered copies of
  each ground-truth box join the proposals the ROI heads see, as a trained RPN's would (the
  planner's probe, ``det3d.planning.probe``, does the same), so that the sampler reaches its
  foreground cap (``BATCH_SIZE_PER_IMAGE * POSITIVE_FRACTION`` RoIs per volume, 320 at most):
  the worst case, not the untrained model's few foreground RoIs.
* ``inference``: the model in eval mode on one such volume under ``torch.no_grad``, with
  ``SCORE_THRESH_TEST 0`` so that the untrained model's detections reach the configured cap
  (``DETECTIONS_PER_IMAGE``): the worst case of the mask branch. Post-processing (the label
  volume) is included.

``peak_rss`` is the process's ``VmHWM`` (the kernel's high-water mark of resident memory, what the
out-of-memory killer sees), Python, torch and the inputs included; ``baseline_rss`` is the
resident memory after imports and input generation, before the model is built.
``tensor_peak`` (on request) is the peak of the bytes held by live tensors during the step, from
``torch.profiler``'s memory timeline: the same tensors a GPU run allocates, so the basis of GPU
estimates (:func:`estimate_gpu_gb`). The profiler inflates the process, so it runs separately.

A parent watches the child's resident memory and kills it above ``limit_gb`` (reported as
``exceeded``), so that measuring an oversized config cannot exhaust the machine.

:func:`fix_mmap_threshold` keeps a long-running process's resident memory from growing with the
number of large buffers it has freed (``det3d-predict`` calls it).
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import List, Optional, Sequence

__all__ = [
    "MemoryResult",
    "measure_memory",
    "estimate_gpu_gb",
    "fix_mmap_threshold",
    "DEFAULT_INPUT_SIZE",
]

DEFAULT_INPUT_SIZE = (64, 128, 128)
_MARKER = "DET3D_MEMORY_RESULT "
_GIB = 1024**3
# GPU estimate = tensor peak * slack + context: the caching allocator's rounding and
# fragmentation (PyTorch reports reserved/allocated of 1.1-1.3 on conv nets) and the CUDA
# context + cuDNN workspaces (~1 GiB).
GPU_ALLOCATOR_SLACK = 1.3
GPU_CONTEXT_GB = 1.0


@dataclasses.dataclass
class MemoryResult:
    """One measurement; sizes in GiB. ``error`` is set (and sizes may be None) when it failed."""

    mode: str
    peak_rss: Optional[float] = None
    baseline_rss: Optional[float] = None
    tensor_peak: Optional[float] = None
    seconds: Optional[float] = None
    detections: Optional[int] = None
    exceeded: bool = False
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.exceeded


_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc's malloc.h)


def fix_mmap_threshold(nbytes: int = 16 << 20) -> bool:
    """
    Makes glibc give every allocation of at least ``nbytes`` its own memory map, returned to the
    system when freed, for the rest of the process. By default glibc raises this threshold to
    the largest buffer freed so far (up to 32 MiB); buffers under it then come from the heap,
    whose freed space is kept and fragments, so the resident memory of a run over many tiles grows
    with their number (``bench/predict_scale.py``, demo model: 716 MiB for a volume of one tile,
    1030 MiB for 27 tiles with the default; 727 and 736 MiB with 16 MiB fixed, at about 10% more
    time). Returns False where the C library is not glibc (nothing is changed).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(nbytes)))


def estimate_gpu_gb(tensor_peak_gb: float) -> float:
    """GPU memory a step whose live tensors peak at ``tensor_peak_gb`` needs (see constants)."""
    return tensor_peak_gb * GPU_ALLOCATOR_SLACK + GPU_CONTEXT_GB


def _status_kb(pid: str, field: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def measure_memory(
    config_file: Optional[str],
    mode: str,
    input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
    opts: Sequence[str] = (),
    limit_gb: Optional[float] = None,
    tensor_peak: bool = False,
    timeout: float = 1800.0,
) -> MemoryResult:
    """
    Measures one config in a fresh Python process.

    Args:
        config_file: a yaml config, or None for ``get_cfg()``'s defaults.
        mode: "train" or "inference".
        input_size: ``(D, H, W)`` of each volume (the middle slice for a 2D model).
        opts: ``KEY VALUE`` overrides, as on the command line.
        limit_gb: kill the child when its resident memory exceeds this (None: no watch).
        tensor_peak: measure the live-tensor peak (profiler) instead of only the RSS.
        timeout: seconds before the child is killed.

    Returns:
        MemoryResult
    """
    if mode not in ("train", "inference"):
        raise ValueError(f"mode must be 'train' or 'inference', got {mode!r}")
    import det3d

    root = os.path.dirname(os.path.dirname(os.path.abspath(det3d.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "det3d.utils.memory", "--mode", mode, "--input-size"]
    cmd += [str(int(s)) for s in input_size]
    if config_file:
        cmd += ["--config-file", config_file]
    if tensor_peak:
        cmd.append("--tensor-peak")
    cmd += ["--opts", *[str(o) for o in opts]]
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    exceeded = False
    try:
        while proc.poll() is None:
            rss = _status_kb(str(proc.pid), "VmRSS")
            if limit_gb is not None and rss is not None and rss * 1024 > limit_gb * _GIB:
                exceeded = True
                proc.kill()
                break
            if time.time() - start > timeout:
                proc.kill()
                proc.communicate()
                return MemoryResult(mode, error=f"timed out after {timeout:.0f} s")
            time.sleep(0.05)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
    if exceeded:
        return MemoryResult(mode, peak_rss=limit_gb, exceeded=True)
    for line in out.splitlines():
        if line.startswith(_MARKER):
            return MemoryResult(**json.loads(line[len(_MARKER) :]))
    tail = (err or out).strip().splitlines()[-3:]
    return MemoryResult(mode, error=f"exit code {proc.returncode}: {' | '.join(tail)}")


# ------------------------------------------------------------------------------------- worker
def _rss_gb(field: str) -> float:
    return _status_kb("self", field) * 1024 / _GIB


def _inputs(cfg, input_size: Sequence[int], count: int, training: bool, input_ndim: int):
    """``count`` model inputs: synthetic volumes (20 objects) with gt Instances in training."""
    import numpy as np
    import torch

    from det3d.data.detection_utils import label_volume_to_instances
    from det3d.data.synthetic import SHAPE_CLASSES, make_synthetic_volume

    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    classes = SHAPE_CLASSES[: max(1, min(len(SHAPE_CLASSES), num_classes))]
    inputs = []
    for i in range(count):
        image, labels, class_of = make_synthetic_volume(
            tuple(input_size), num_objects=20, classes=classes, size_range=(4.0, 10.0), seed=i
        )
        image = np.repeat(image[:1], len(cfg.MODEL.PIXEL_MEAN), axis=0)
        if input_ndim == 2:  # a 2D model gets the middle slice
            z = image.shape[1] // 2
            image, labels = image[:, z], labels[z]
        record = {"image": torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)}
        record.update(zip(("depth", "height", "width")[-input_ndim:], labels.shape))
        if training:
            record["instances"] = label_volume_to_instances(labels, class_of)
        inputs.append(record)
    return inputs


def _input_ndim(cfg) -> int:
    """2 only for the plain 2D R-CNNs; other meta-architectures (2.5D slice fusion) take volumes."""
    plain = ("GeneralizedRCNN3D", "ProposalNetwork3D")
    return 2 if cfg.MODEL.SPATIAL_DIMS == 2 and cfg.MODEL.META_ARCHITECTURE in plain else 3


def _run(args) -> dict:
    import itertools

    import torch

    from det3d.config import get_cfg
    from det3d.engine.train_loop import AMPTrainer, SimpleTrainer
    from det3d.modeling import build_model
    from det3d.planning.probe import _steady_state_proposals as steady_state_proposals
    from det3d.solver import build_optimizer

    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(list(args.opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    if args.mode == "inference":
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    # Inputs first: their memory is part of the baseline, not of the model's cost.
    training = args.mode == "train"
    count = cfg.SOLVER.IMS_PER_BATCH if training else 1
    if training and cfg.MODEL.META_ARCHITECTURE == "SliceFusionRCNN":
        # IMS_PER_BATCH counts slice windows there, and the model trains on TRAIN_SLICES_PER_VOLUME
        # target slices of each whole volume it is given: as many volumes as make the batch
        per_volume = max(1, cfg.MODEL.SLICE_FUSION.TRAIN_SLICES_PER_VOLUME)
        count = -(-count // per_volume)
    inputs = _inputs(cfg, args.input_size, count, training, _input_ndim(cfg))
    baseline = _rss_gb("VmRSS")

    def step():
        torch.manual_seed(0)
        model = build_model(cfg)
        if training:
            heads = getattr(model, "roi_heads", None)
            if heads is not None:  # the foreground RoIs a trained RPN gives (planner's probe)
                heads.register_forward_pre_hook(steady_state_proposals, with_kwargs=True)
            optimizer = build_optimizer(cfg, model)
            loader = itertools.repeat(inputs)
            if cfg.SOLVER.AMP.ENABLED:
                trainer = AMPTrainer(model, loader, optimizer, precision=cfg.SOLVER.AMP.DTYPE)
            else:
                trainer = SimpleTrainer(model, loader, optimizer)
            trainer.train(0, 1)
            return None
        model.eval()
        with torch.no_grad():
            outputs = model(inputs)
        return len(outputs[0]["instances"]) if "instances" in outputs[0] else None

    start = time.perf_counter()
    tensor_peak = None
    if args.tensor_peak:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        with profile(
            activities=[ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=True,
            with_stack=True,
        ) as prof:
            detections = step()
        timeline = MemoryProfileTimeline(prof._memory_profile())
        _, sizes = timeline._coalesce_timeline(torch.device("cpu"))
        tensor_peak = max(sum(s) for s in sizes) / _GIB if sizes else 0.0
    else:
        detections = step()
    return {
        "mode": args.mode,
        "peak_rss": _rss_gb("VmHWM"),
        "baseline_rss": baseline,
        "tensor_peak": tensor_peak,
        "seconds": time.perf_counter() - start,
        "detections": detections,
    }


def _main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="worker of det3d.utils.memory.measure_memory")
    parser.add_argument("--mode", required=True, choices=("train", "inference"))
    parser.add_argument("--config-file", default=None)
    parser.add_argument("--input-size", type=int, nargs="+", default=list(DEFAULT_INPUT_SIZE))
    parser.add_argument("--tensor-peak", action="store_true")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)
    print(_MARKER + json.dumps(_run(args)), flush=True)


if __name__ == "__main__":
    _main()
