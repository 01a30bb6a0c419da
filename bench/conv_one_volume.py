"""Speed of det3d's ``Conv3d`` on one volume (batch 1) against ``torch.nn.Conv3d``, on the CPU.

    python bench/conv_one_volume.py [--threads 1] [--repeats 5] [--config CONFIG]

For a float32 input of batch 1 whose channels x depth x height is at most 20480, torch 2.13 runs a
3D convolution with its native kernel instead of oneDNN, several times slower; every inference
pass is such a batch. ``det3d.layers.Conv3d`` runs those as a batch of two halves
(det3d/layers/wrappers.py). Prints one table, each time the median of ``--repeats`` runs, after
checking that both give the same output:

* single layers, forward and forward + backward: 3x3x3 convolutions of the planned CPU model's
  widths on the maps of a 64^3 volume, and its 7^3 stem;
* the backbone and FPN of ``--config`` (random weights; the planned ``toy3d`` model by default)
  on a 64^3 and a 128^3 volume, forward, with every ``Conv3d`` of the model cut or not.
"""

import argparse

import torch
from ops import median_time, print_speed_table  # bench/ops.py (this folder is on sys.path)
from torch import nn

from det3d.config import get_cfg
from det3d.layers import Conv3d
from det3d.modeling import build_backbone


def warm_median_time(fn, repeats):
    fn()  # warm-up: oneDNN builds its kernels on the first call of a shape
    return median_time(fn, repeats)


def bench_layers(repeats):
    rows = []
    for cin, cout, k, s, size in (
        (1, 16, 7, 2, 64),
        (16, 32, 3, 1, 16),
        (32, 32, 3, 1, 16),
        (32, 64, 3, 2, 16),
        (64, 64, 3, 1, 8),
        (32, 32, 3, 1, 32),
    ):
        torch.manual_seed(0)
        ours = Conv3d(cin, cout, k, stride=s, padding=k // 2)
        ref = nn.Conv3d(cin, cout, k, stride=s, padding=k // 2)
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(1, cin, size, size, size, requires_grad=True)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)
        cut = "cut" if ours._split_axis(x) is not None else "as is"
        name = f"{cin}->{cout} {k}^3/{s} on {size}^3 ({cut})"

        def fwd(m):
            with torch.no_grad():
                m(x)

        def fwd_bwd(m):
            m(x).sum().backward()

        rows.append((f"{name} fwd", warm_median_time(lambda: fwd(ours), repeats),
                     warm_median_time(lambda: fwd(ref), repeats)))  # fmt: skip
        rows.append((f"{name} fwd+bwd", warm_median_time(lambda: fwd_bwd(ours), repeats),
                     warm_median_time(lambda: fwd_bwd(ref), repeats)))  # fmt: skip
    return rows


def bench_backbone(config, repeats):
    cfg = get_cfg()
    cfg.merge_from_file(config)
    torch.manual_seed(0)
    backbone = build_backbone(cfg).eval()
    rows = []
    for size in (64, 128):
        x = torch.randn(1, cfg.INPUT.IN_CHANNELS, size, size, size)

        def run():
            with torch.no_grad():
                return backbone(x)

        ours = run()
        t_ours = warm_median_time(run, repeats)
        own = Conv3d._split_axis
        Conv3d._split_axis = lambda self, x: None  # every convolution as torch runs it
        try:
            ref = run()
            t_ref = warm_median_time(run, repeats)
        finally:
            Conv3d._split_axis = own
        for k in ours:
            torch.testing.assert_close(ours[k], ref[k], rtol=1e-3, atol=1e-3)
        rows.append((f"backbone+FPN fwd on {size}^3", t_ours, t_ref))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", default="configs/Planned/toy3d.yaml")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = bench_layers(args.repeats) + bench_backbone(args.config, args.repeats)
    print_speed_table(rows, args.repeats, ref="torch", width=40)


if __name__ == "__main__":
    main()
