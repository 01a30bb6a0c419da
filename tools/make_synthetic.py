#!/usr/bin/env python
"""
Writes a synthetic dataset (images/, labels/, classes/, meta.json) for tests and demos.

    python tools/make_synthetic.py --output datasets/my_synth --num-volumes 8 \
        --shape 32 96 96 --num-objects 4 10 --spacing 1.0 0.5 0.5 [--touching [FRACTION]] --seed 0
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from det3d.data.synthetic import KNOWN_SHAPES, SHAPE_CLASSES, make_synthetic_dataset  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output", required=True, help="folder to write")
    p.add_argument("--num-volumes", type=int, default=8)
    p.add_argument("--shape", type=int, nargs=3, default=[32, 96, 96], metavar=("D", "H", "W"))
    p.add_argument(
        "--num-objects",
        type=int,
        nargs="+",
        default=[4, 10],
        help="a count, or MIN MAX drawn per volume",
    )
    p.add_argument("--classes", nargs="+", default=list(SHAPE_CLASSES), choices=KNOWN_SHAPES)
    p.add_argument("--size-range", type=float, nargs=2, default=[2.5, 5.0], help="semi-axes, µm")
    p.add_argument(
        "--spacing", type=float, nargs=3, default=[1.0, 0.5, 0.5], metavar=("Z", "Y", "X")
    )
    p.add_argument(
        "--touching",
        nargs="?",
        type=float,
        const=1.0,
        default=0.0,
        help="objects touch (alone: every new object is placed against an earlier one; with a "
        "FRACTION in (0, 1): that share of them)",
    )
    p.add_argument(
        "--noise", default="gaussian", choices=["gaussian", "poisson", "poisson+gaussian", "none"]
    )
    p.add_argument("--noise-level", type=float, default=0.05)
    p.add_argument("--blur-sigma", type=float, default=0.5, help="µm")
    p.add_argument("--dtype", default="float32", choices=["float32", "uint16"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    n = args.num_objects
    if len(n) not in (1, 2):
        p.error("--num-objects takes one count or MIN MAX")
    meta = make_synthetic_dataset(
        args.output,
        args.num_volumes,
        seed=args.seed,
        spacing=args.spacing,
        shape=tuple(args.shape),
        num_objects=n[0] if len(n) == 1 else tuple(n),
        classes=tuple(args.classes),
        size_range=tuple(args.size_range),
        touching=args.touching if 0.0 < args.touching < 1.0 else bool(args.touching),
        noise=args.noise,
        noise_level=args.noise_level,
        blur_sigma=args.blur_sigma,
        dtype=args.dtype,
    )
    print(f"Wrote {meta['num_volumes']} volumes to {args.output}")


if __name__ == "__main__":
    main()
