"""
Speed of the label-volume metrics on a large volume: instance matching at 9 IoU thresholds and
CTC SEG on a 256 x 512 x 512 label pair with ~2,000 objects each. Target: under 10 s each.

    python bench/eval_speed.py [--shape 256 512 512] [--objects 2000] [--repeats 1]

Generation (not timed): ground truth = random ellipsoids written without overlap; prediction =
the same objects shifted, eroded or dilated, some missing, some split in two, plus false
positives, with shuffled ids.
"""

import argparse
import resource
import time

import numpy as np

from det3d.evaluation import matching_metrics, seg_score
from det3d.evaluation.matching import DEFAULT_THRESHOLDS


def _ellipsoid(radii):
    r = np.asarray(radii, dtype=np.float64)
    ext = np.ceil(r).astype(int)
    grids = np.ogrid[tuple(slice(-e, e + 1) for e in ext)]
    return sum((g / ri) ** 2 for g, ri in zip(grids, r)) <= 1.0


def _paste(vol, mask, center, value, overwrite=False):
    """Writes ``mask`` centred at ``center`` into ``vol`` (clipped), on background only."""
    lo = [c - m // 2 for c, m in zip(center, mask.shape)]
    src, dst = [], []
    for start, m, s in zip(lo, mask.shape, vol.shape):
        a, b = max(start, 0), min(start + m, s)
        if a >= b:
            return
        src.append(slice(a - start, b - start))
        dst.append(slice(a, b))
    region = vol[tuple(dst)]
    m = mask[tuple(src)]
    if not overwrite:
        m = m & (region == 0)
    region[m] = value


def make_pair(shape, n_objects, seed=0):
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.int32)
    pred = np.zeros(shape, np.int32)
    centers = np.stack([rng.integers(0, s, n_objects) for s in shape], 1)
    radii = np.stack([rng.uniform(lo, hi, n_objects) for lo, hi in ((4, 8), (8, 15), (8, 15))], 1)
    pred_ids = rng.permutation(np.arange(1, 3 * n_objects + 1))  # shuffled, non-consecutive
    next_id = iter(pred_ids)
    for k in range(n_objects):
        _paste(gt, _ellipsoid(radii[k]), centers[k], k + 1)
        u = rng.random()
        if u < 0.05:  # missed
            continue
        c = centers[k] + rng.integers(-2, 3, 3)
        r = radii[k] * rng.uniform(0.85, 1.15)  # eroded or dilated
        mask = _ellipsoid(r)
        if u < 0.10:  # split in two along x
            half = mask.shape[2] // 2
            left, right = mask.copy(), mask.copy()
            left[:, :, half:] = False
            right[:, :, :half] = False
            _paste(pred, left, c, next(next_id))
            _paste(pred, right, c, next(next_id))
        else:
            _paste(pred, mask, c, next(next_id))
    for _ in range(n_objects // 20):  # false positives
        c = [rng.integers(0, s) for s in shape]
        _paste(pred, _ellipsoid(rng.uniform(3, 10, 3)), c, next(next_id))
    return gt, pred


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 512, 512))
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    t0 = time.perf_counter()
    gt, pred = make_pair(tuple(args.shape), args.objects)
    gen = time.perf_counter() - t0
    n_gt = np.count_nonzero(np.bincount(gt.reshape(-1))[1:])
    n_pred = np.count_nonzero(np.bincount(pred.reshape(-1))[1:])
    print(
        f"volume {tuple(args.shape)} int32 ({gt.nbytes / 2**20:.0f} MiB each), "
        f"gt objects {n_gt}, pred objects {n_pred} (generated in {gen:.1f} s, not timed)"
    )

    timings = {"matching_metrics (9 thresholds)": [], "seg_score": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        m = matching_metrics(gt, pred, DEFAULT_THRESHOLDS)
        timings["matching_metrics (9 thresholds)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        seg = seg_score(gt, pred)
        timings["seg_score"].append(time.perf_counter() - t)

    print(f"\n{'metric':<34s}{'seconds':>10s}")
    total = 0.0
    for name, ts in timings.items():
        best = min(ts)
        total += best
        print(f"{name:<34s}{best:>10.2f}")
    print(f"{'total':<34s}{total:>10.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npeak RSS {peak:.2f} GiB (including generation)")
    print(f"SEG = {seg:.4f}")
    print("thr   precision recall  f1      PQ")
    for t in (0.5, 0.7, 0.9):
        r = m[t]
        print(
            f"{t:<5g} {r['precision']:.4f}    {r['recall']:.4f}  {r['f1']:.4f}  "
            f"{r['panoptic_quality']:.4f}"
        )


if __name__ == "__main__":
    main()
