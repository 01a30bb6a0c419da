#!/usr/bin/env python
"""
Parameters and FLOPs of det3d's shipped configs.

For every ``configs/**/*.yaml`` (files that fail to load are skipped with a message) and for the
default config (``SPATIAL_DIMS 3``), prints a table with the total and trainable parameter counts
(``MODEL.FREEZE_MODULES`` applied) and the GFLOPs of one inference forward pass, counted by
``fvcore.nn.FlopCountAnalysis`` on a dummy input of ``INPUT.CROP_SIZE`` (else 64x128x128, or
128x128 in 2D; ``--input-size`` overrides).

.. code-block:: none

    python tools/analyze_model.py                       # every config + the defaults
    python tools/analyze_model.py --configs configs/Synthetic/*.yaml --input-size 32 64 64
    python tools/analyze_model.py --no-flops            # parameters only (fast)

How FLOPs are counted (say so when quoting them):

* fvcore counts one multiply-add as one flop, convolutions and linear layers included;
  element-wise ops (ReLU, BN in eval, additions) are not counted.
* The model is untrained, so how many RoIs reach the heads depends on random weights. To make the
  number reproducible the analysis sets ``SCORE_THRESH_TEST = 0`` (every proposal may become a
  detection) and caps detections at ``--detections`` (default 100); the table reports the RoI
  counts that were actually used (proposals / detections). Mask-head FLOPs scale linearly with
  the detections, box-head FLOPs with the proposals.
* Attention (``scaled_dot_product_attention``, the transformer backbones) is counted as its two
  matmuls, ``q k^T`` and ``attn v``.
* det3d's compiled ops: ``det3d::roi_align`` is counted as output elements x samples per bin x
  2**ndim (one multiply-add per interpolation corner); with adaptive sampling (ratio 0)
  2 samples per axis are assumed. ``det3d::nms`` is not counted.
* A model that cannot be traced whole is counted as backbone + RPN only (the "counted" column).
"""
import argparse
import glob
import logging
import os
import sys
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from det3d.config import get_cfg  # noqa: E402
from det3d.modeling import GeneralizedRCNN3D, build_model  # noqa: E402
from det3d.modeling.meta_arch import count_parameters  # noqa: E402

logger = logging.getLogger("det3d.tools.analyze_model")

_DEFAULT_SIZE = {3: (64, 128, 128), 2: (128, 128)}


def _roi_align_flop_jit(inputs, outputs) -> int:
    """FLOPs of ``det3d::roi_align``: output elements x samples per bin x 2**ndim corners."""
    out_shape = outputs[0].type().sizes()
    if not out_shape:
        return 0
    ndim = len(out_shape) - 2
    sampling_ratio = 0
    if len(inputs) > 4:  # the op itself: (input, rois, spatial_scale, output_size, ratio, aligned)
        try:
            sampling_ratio = int(inputs[4].toIValue())
        except Exception:  # not a constant in the graph
            pass
    samples = (sampling_ratio if sampling_ratio > 0 else 2) ** ndim
    return int(np.prod(out_shape)) * samples * 2**ndim


def _sdpa_flop_jit(inputs, outputs) -> int:
    """FLOPs of ``aten::scaled_dot_product_attention``: the two matmuls, q k^T and attn v (one
    multiply-add per product; softmax, scaling and an additive mask not counted)."""
    q, k, v = (inputs[i].type().sizes() for i in range(3))
    if not q or not k or not v:
        return 0
    batch = int(np.prod(q[:-2]))
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


class _InferenceGraph(nn.Module):
    """Inference as a function of one image tensor (what the jit tracer needs)."""

    def __init__(self, model: nn.Module, full: bool):
        super().__init__()
        self.model = model
        self.full = full
        self.num_proposals = 0
        self.num_detections = 0

    def forward(self, image: torch.Tensor):
        model = self.model
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        self.num_proposals = len(proposals[0])
        if not self.full:
            return proposals[0].proposal_boxes.tensor, proposals[0].objectness_logits
        results, _ = model.roi_heads(images, features, proposals, None)
        r = results[0]
        self.num_detections = len(r)
        outputs = (r.pred_boxes.tensor, r.scores, r.pred_classes)
        if r.has("pred_masks"):
            outputs = outputs + (r.pred_masks,)
        return outputs


def _count_flops(model: nn.Module, image: torch.Tensor, full: bool):
    from fvcore.nn import FlopCountAnalysis

    graph = _InferenceGraph(model, full)
    analysis = FlopCountAnalysis(graph, (image,))
    analysis.set_op_handle("det3d::roi_align", _roi_align_flop_jit)
    # det3d.layers.roi_align is an autograd Function: the tracer records it as a PythonOp.
    analysis.set_op_handle("prim::PythonOp._ROIAlignFunction", _roi_align_flop_jit)
    analysis.set_op_handle("det3d::nms", None)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop_jit)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    total = analysis.total()
    return total, graph.num_proposals, graph.num_detections


def analyze(cfg, name: str, input_size: Optional[Sequence[int]], detections: int, flops: bool):
    """Returns one table row (dict) for ``cfg``."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = detections
    ndim = cfg.MODEL.SPATIAL_DIMS
    if input_size:
        size = tuple(input_size)[-ndim:]
    elif len(cfg.INPUT.CROP_SIZE):
        size = tuple(int(s) for s in cfg.INPUT.CROP_SIZE)[-ndim:]
    else:
        size = _DEFAULT_SIZE[ndim]
    torch.manual_seed(0)
    model = build_model(cfg)
    model.eval()
    total, trainable = count_parameters(model)
    row = {
        "config": name,
        "arch": cfg.MODEL.META_ARCHITECTURE,
        "input": "x".join(str(s) for s in size),
        "params": total,
        "trainable": trainable,
        "gflops": None,
        "rois": "",
        "counted": "",
    }
    if not flops:
        return row
    image = torch.rand((len(cfg.MODEL.PIXEL_MEAN),) + size)
    full = isinstance(model, GeneralizedRCNN3D)
    with torch.no_grad():
        try:
            total_flops, n_prop, n_det = _count_flops(model, image, full)
            row["counted"] = "full model" if full else "backbone+RPN"
        except Exception as e:  # a part the tracer cannot follow: count what it can
            if not full:
                raise
            logger.warning(f"{name}: tracing the whole model failed ({e}); counting backbone+RPN")
            total_flops, n_prop, n_det = _count_flops(model, image, False)
            row["counted"] = "backbone+RPN (full model not traceable)"
    row["gflops"] = total_flops / 1e9
    row["rois"] = f"{n_prop}/{n_det}" if full else f"{n_prop}/-"
    return row


def _format_table(rows: List[dict]) -> str:
    headers = [
        "config",
        "arch",
        "input",
        "params",
        "trainable",
        "GFLOPs",
        "RoIs (prop/det)",
        "counted",
    ]
    lines = []
    for r in rows:
        lines.append(
            [
                r["config"],
                r["arch"],
                r["input"],
                f"{r['params'] / 1e6:.2f}M",
                f"{r['trainable'] / 1e6:.2f}M",
                "-" if r["gflops"] is None else f"{r['gflops']:.2f}",
                r["rois"],
                r["counted"],
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers), "-+-".join("-" * w for w in widths)]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def main(argv=None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        nargs="*",
        default=None,
        help="yaml files to analyse (default: configs/**/*.yaml)",
    )
    parser.add_argument(
        "--input-size", type=int, nargs="+", default=None, help="D H W (or H W): dummy input size"
    )
    parser.add_argument("--detections", type=int, default=100, help="detections per volume")
    parser.add_argument("--no-flops", action="store_true", help="count parameters only")
    parser.add_argument("--no-defaults", action="store_true", help="skip the default config row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = args.configs
    if files is None:
        files = sorted(glob.glob(os.path.join(root, "configs", "**", "*.yaml"), recursive=True))
    rows = []
    if not args.no_defaults:
        cfg = get_cfg()
        cfg.MODEL.SPATIAL_DIMS = 3
        rows.append(
            analyze(cfg, "(defaults, 3D)", args.input_size, args.detections, not args.no_flops)
        )
    for path in files:
        inside = os.path.abspath(path).startswith(root + os.sep)
        name = os.path.relpath(os.path.abspath(path), root) if inside else path
        cfg = get_cfg()
        try:
            cfg.merge_from_file(path)
        except Exception as e:
            print(f"skipping {name}: {e}", file=sys.stderr)
            continue
        try:
            rows.append(analyze(cfg, name, args.input_size, args.detections, not args.no_flops))
        except Exception as e:
            print(f"skipping {name}: could not build or run the model: {e}", file=sys.stderr)
    print(_format_table(rows))
    if not args.no_flops:
        print(
            "\nGFLOPs: fvcore multiply-adds of one inference pass on a random input, "
            f"SCORE_THRESH_TEST 0 and at most {args.detections} detections; roi_align counted "
            "as output x samples x 2**ndim, attention as its two matmuls, nms not counted."
        )
    return rows


if __name__ == "__main__":
    main()
