"""Bytes a backbone keeps for its backward pass, with and without activation checkpointing.

    python bench/activation_memory.py [--config-file configs/Synthetic/<vitdet config>.yaml]
        [--input-size 32 96 96] [KEY VALUE ...]

Builds the config's backbone, runs one training forward pass on a random input of one volume and
counts, with ``torch.autograd.graph.saved_tensors_hooks``, the bytes of the tensors autograd saves
for the backward pass (the activation memory that ``MODEL.VIT.USE_ACT_CHECKPOINT`` trades for
recomputation), once with the option off and once on. Prints one JSON line per setting. The count
is exact and device independent; it leaves out parameters, gradients and optimizer state.
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from det3d.config import get_cfg  # noqa: E402
from det3d.modeling.backbone import build_backbone  # noqa: E402


def saved_bytes(backbone: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for backward after ``backbone(x)``."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = backbone(x)
    sum(o.sum() for o in out.values()).backward()
    return sum(seen.values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config-file",
        default=os.path.join("configs", "Synthetic", "mask_rcnn_vitdet_B_SFP_3d_gpu.yaml"),
    )
    p.add_argument("--input-size", type=int, nargs="+", default=[32, 96, 96])
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    results = []
    for use in (False, True):
        cfg = get_cfg()
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(list(args.opts) + ["MODEL.VIT.USE_ACT_CHECKPOINT", use])
        torch.manual_seed(0)
        backbone = build_backbone(cfg).train()
        size = tuple(args.input_size)[-cfg.MODEL.SPATIAL_DIMS :]
        x = torch.randn(1, len(cfg.MODEL.PIXEL_MEAN), *size)
        result = {
            "config": args.config_file,
            "input": "x".join(map(str, size)),
            "use_act_checkpoint": use,
            "saved_for_backward_mb": round(saved_bytes(backbone, x) / 2**20, 1),
        }
        print(json.dumps(result))
        results.append(result)
    return results


if __name__ == "__main__":
    main()
