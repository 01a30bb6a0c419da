#!/usr/bin/env python
"""
Prediction at scale: wall time, voxels per second and peak memory of ``det3d-predict`` with the
demo model on synthetic volumes of 64x256x256, 128x512x512 and 256x1024x1024 voxels, generated
block by block and streamed to zarr (uint16, spacing 1.0 x 0.5 x 0.5 um, objects as in
``synthetic_train``), with their ground truth. Each prediction runs as a child process, whose peak
resident memory (``ru_maxrss``) is read when it ends; memory must not grow with the volume.

Also prints the SEG of each prediction against the ground truth, and, on the smallest volume
(which fits one tile), SEG of the untiled result against the same volume cut into tiles of half
its y/x extent.

.. code-block:: none

    python bench/predict_scale.py [--weights output/demo/model_final.pth] [--sizes 64x256x256 ...]

Without ``--weights`` it looks for the demo model where ``make demo`` and ``tools/train_net.py``
put it, and says how to train it when there is none.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from det3d.data import make_synthetic_volume, read_labels  # noqa: E402
from det3d.data.datasets.builtin import SYNTHETIC_SPLITS  # noqa: E402
from det3d.data.io import read_volume  # noqa: E402
from det3d.evaluation import seg_score  # noqa: E402

# the demo model (make demo) and its config; --config-file for other weights
CONFIG = os.path.join(REPO, "configs", "Synthetic", "mask_rcnn_R18_FPN_3d_demo.yaml")
DEFAULT_WEIGHTS = [os.path.join(REPO, "output", "demo", "model_final.pth")]
SIZES = ["64x256x256", "128x512x512", "256x1024x1024"]
BLOCK = (32, 128, 128)  # generated one at a time; the volume is a mosaic of such blocks
SPACING = (1.0, 0.5, 0.5)


def find_weights(given):
    if given:
        if not os.path.isfile(given):
            sys.exit(f"--weights {given}: no such file")
        return given
    for path in DEFAULT_WEIGHTS:
        if os.path.isfile(path):
            return path
    sys.exit(
        "No trained demo model found (looked for " + ", ".join(DEFAULT_WEIGHTS) + "). Train it "
        "with `make demo` (about 5 min of training on 2 CPU cores) or `python tools/train_net.py "
        "--config-file configs/Synthetic/mask_rcnn_R18_FPN_3d_demo.yaml`, or pass --weights "
        "path/to/model_final.pth"
    )


def make_volume(folder: str, shape, seed: int = 0):
    """Streams a mosaic of synthetic blocks to image.zarr (uint16) and truth.zarr (int32)."""
    import zarr

    params = dict(SYNTHETIC_SPLITS["synthetic_train"])
    lo, hi = params.pop("num_objects")
    for k in ("num_volumes", "seed", "shape"):
        params.pop(k)
    # the training density, scaled to the block
    per_block = int(round((lo + hi) / 2 * np.prod(BLOCK) / (32 * 96 * 96)))
    image = zarr.create_array(
        store=os.path.join(folder, "image.zarr"), shape=shape, chunks=BLOCK, dtype="uint16"
    )
    image.attrs["spacing"] = list(SPACING)
    truth = zarr.create_array(
        store=os.path.join(folder, "truth.zarr"), shape=shape, chunks=BLOCK, dtype="int32"
    )
    next_id = 0
    for i, start in enumerate(np.ndindex(*[n // b for n, b in zip(shape, BLOCK)])):
        img, lab, _ = make_synthetic_volume(BLOCK, num_objects=per_block, seed=seed + i, **params)
        region = tuple(slice(s * b, (s + 1) * b) for s, b in zip(start, BLOCK))
        image[region] = np.clip(img[0] * 1000, 0, 65535).astype(np.uint16)
        truth[region] = np.where(lab > 0, lab + next_id, 0)
        next_id += int(lab.max())
    return os.path.join(folder, "image.zarr"), os.path.join(folder, "truth.zarr"), next_id


def run_predict(image: str, output: str, weights: str, *opts, config: str = CONFIG):
    """Runs det3d-predict in a child; returns (seconds, peak RSS in MiB, stdout)."""
    cmd = [sys.executable, "-m", "det3d.engine.predict_cli", "--config-file", config,
           "--input", image, "--output", output, "MODEL.WEIGHTS", weights, *opts]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"det3d-predict failed ({proc.returncode}): {' '.join(cmd)}\n{out}")
    return seconds, usage.ru_maxrss / 1024.0, out


def labels_of(output: str) -> np.ndarray:
    for name in ("image_labels.tif", "image_labels.zarr"):
        path = os.path.join(output, name)
        if os.path.exists(path):
            return read_labels(path)
    raise FileNotFoundError(f"no label volume in {output}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="the demo model (default: where make demo puts it)")
    parser.add_argument("--config-file", default=CONFIG, help="the config of --weights")
    parser.add_argument("--sizes", nargs="+", default=SIZES, help="DxHxW, multiples of 32x128x128")
    parser.add_argument("--workdir", help="where volumes and outputs go (default: a temp folder)")
    parser.add_argument("--no-seg", action="store_true", help="skip the SEG measurements")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    weights = find_weights(args.weights)
    work = args.workdir or tempfile.mkdtemp(prefix="det3d-predict-bench-")
    print(f"weights {weights}; volumes and outputs in {work}")
    rows = []
    for size in args.sizes:
        shape = tuple(int(n) for n in size.split("x"))
        folder = os.path.join(work, size)
        os.makedirs(folder, exist_ok=True)
        t0 = time.perf_counter()
        image, truth, n_true = make_volume(folder, shape)
        gen = time.perf_counter() - t0
        seconds, peak, out = run_predict(
            image, os.path.join(folder, "out"), weights, config=args.config_file
        )
        with open(os.path.join(folder, "out", "image_objects.csv")) as f:
            n_pred = sum(1 for _ in csv.DictReader(f))
        tiles = int(out.split(" tiles (")[0].rsplit("; ", 1)[-1])
        row = dict(size=size, voxels=int(np.prod(shape)), tiles=tiles, objects_true=n_true,
                   objects_pred=n_pred, seconds=round(seconds, 1),
                   voxels_per_s=int(np.prod(shape) / seconds), peak_mib=round(peak),
                   generate_s=round(gen, 1))
        if not args.no_seg:
            gt = np.asarray(read_volume(truth)[0])
            row["seg"] = round(float(seg_score(gt, labels_of(os.path.join(folder, "out")))), 4)
            del gt
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["peak_mib"]
    print(f"\n{'volume':>14} {'voxels':>12} {'tiles':>5} {'objects':>8} {'pred':>6} "
          f"{'wall s':>7} {'Mvox/s':>7} {'peak MiB':>8} {'x smallest':>10} {'SEG':>6}")
    for r in rows:
        print(f"{r['size']:>14} {r['voxels']:>12,} {r['tiles']:>5} {r['objects_true']:>8} "
              f"{r['objects_pred']:>6} {r['seconds']:>7.1f} {r['voxels_per_s'] / 1e6:>7.2f} "
              f"{r['peak_mib']:>8} {r['peak_mib'] / base:>10.2f} "
              f"{r.get('seg', float('nan')):>6.3f}")
    ratio = max(r["peak_mib"] for r in rows) / base
    print(f"peak memory, largest / smallest volume: {ratio:.2f} (must stay within 1.5)")
    if not args.no_seg:
        tiled_vs_untiled(work, args.sizes[0], weights, config=args.config_file)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def tiled_vs_untiled(work: str, size: str, weights: str, config: str = CONFIG) -> None:
    """SEG of the smallest volume in one tile vs in tiles of a quarter of its y/x extent."""
    folder = os.path.join(work, size)
    d, h, w = (int(n) for n in size.split("x"))
    gt = np.asarray(read_volume(os.path.join(folder, "truth.zarr"))[0])
    untiled = seg_score(gt, labels_of(os.path.join(folder, "out")))
    tile = f"[{d}, {h // 2}, {w // 2}]"
    seconds, _, out = run_predict(
        os.path.join(folder, "image.zarr"), os.path.join(folder, "tiled"), weights,
        "TEST.TILE.SIZE", tile, config=config,
    )
    tiled = seg_score(gt, labels_of(os.path.join(folder, "tiled")))
    tiles = int(out.split(" tiles (")[0].rsplit("; ", 1)[-1])
    print(f"{size}: SEG untiled (1 tile) {untiled:.4f}, tiled ({tiles} tiles of {tile}) "
          f"{tiled:.4f}, difference {tiled - untiled:+.4f}")


if __name__ == "__main__":
    main()
