"""Speed of det3d's compiled ops against pure-PyTorch implementations, on the CPU.

    python bench/ops.py [--threads 2] [--repeats 3]

Prints one table. Each time is the median of `--repeats` runs; every comparison first checks that
both implementations give the same result.

* NMS (3D): proposals as a detector emits them, many per object: 100 objects with centres uniform
  in a 64^3 volume and sizes 8-24 voxels per axis; each box is an object box with its centre
  moved by N(0, 0.1 * size) and each side scaled by exp(N(0, 0.1)); scores uniform; IoU
  threshold 0.5. Reference: greedy NMS that takes the best box, computes its IoU with all
  remaining boxes in vectorised torch and drops the suppressed ones (MONAI / nnDetection's way).
  One more row shows boxes that rarely overlap (uniform centres, sizes 8-24), where most boxes
  are kept.
* RoIAlign (3D), forward + backward w.r.t. the input: Mask R-CNN box-head-like settings. A
  (2, 64, 32, 64, 64) float32 feature map (stride 4 of a 128x256x256 volume, spatial_scale
  0.25), 512 RoIs with sides 16-64 voxels in the volume, output (7, 7, 7), sampling_ratio 2,
  aligned=True. Reference: the same sample points built as a grid for F.grid_sample
  (trilinear, align_corners=True, coordinates clamped and out-of-range samples zeroed as the
  kernel does), then averaged within bins.
* Linear resize (3D), forward + backward: the foreground head's step, (2, 8, 16, 16, 16) to 64^3.
  Reference: ``F.interpolate(mode="trilinear", align_corners=False)``.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from det3d.layers.nms import nms
from det3d.layers.resize import resize_linear
from det3d.layers.roi_align import roi_align


def greedy_nms_torch(boxes, scores, iou_threshold):
    """Pure-PyTorch greedy NMS: one vectorised IoU row per kept box."""
    order = scores.argsort(descending=True, stable=True)
    boxes = boxes[order].double()
    nd = boxes.shape[1] // 2
    volume = (boxes[:, nd:] - boxes[:, :nd]).clamp(min=0).prod(1)
    alive = torch.arange(len(boxes))
    keep = []
    while alive.numel() > 0:
        i, rest = alive[0], alive[1:]
        keep.append(i)
        sides = torch.minimum(boxes[i, nd:], boxes[rest, nd:]) - torch.maximum(
            boxes[i, :nd], boxes[rest, :nd]
        )
        inter = sides.clamp(min=0).prod(1)
        union = volume[i] + volume[rest] - inter
        iou = torch.where(union > 0, inter / union, torch.zeros_like(union))
        alive = rest[iou <= iou_threshold]
    return order[torch.stack(keep)] if keep else order[:0]


def object_proposals(n, num_objects=100, extent=64.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(num_objects, 3, generator=g) * extent
    sizes = 8 + torch.rand(num_objects, 3, generator=g) * 16
    which = torch.randint(0, num_objects, (n,), generator=g)
    c = centres[which] + torch.randn(n, 3, generator=g) * 0.1 * sizes[which]
    s = sizes[which] * torch.exp(torch.randn(n, 3, generator=g) * 0.1)
    return torch.cat([c - s / 2, c + s / 2], dim=1), torch.rand(n, generator=g)


def uniform_boxes(n, extent=64.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 3, generator=g) * extent
    s = 8 + torch.rand(n, 3, generator=g) * 16
    return torch.cat([c - s / 2, c + s / 2], dim=1), torch.rand(n, generator=g)


def grid_sample_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned=True):
    """RoIAlign with F.grid_sample, at the kernel's sample points (fixed sampling_ratio)."""
    nd = input.dim() - 2
    size = input.shape[2:]
    k, r = len(rois), sampling_ratio
    offset = 0.5 if aligned else 0.0
    coords, valid = [], []
    for a in range(nd):  # array axis a holds box coordinate nd - 1 - a
        c = nd - 1 - a
        start = rois[:, 1 + c] * spatial_scale - offset
        length = rois[:, 1 + nd + c] * spatial_scale - offset - start
        if not aligned:
            length = length.clamp(min=1)
        bin_size = (length / output_size[a])[:, None, None]
        p = torch.arange(output_size[a], dtype=rois.dtype)[None, :, None]
        s = torch.arange(r, dtype=rois.dtype)[None, None, :]
        x = (start[:, None, None] + p * bin_size + (s + 0.5) * bin_size / r).reshape(k, -1)
        # The kernel's border rule: samples beyond [-1, size] are 0, others clamp into the volume.
        valid.append((x >= -1) & (x <= size[a]))
        x = x.clamp(0, size[a] - 1)
        coords.append(2 * x / (size[a] - 1) - 1)
    d, h, w = (x.shape[1] for x in coords)
    # grid_sample wants (x, y, z) = (W, H, D) in the last dim.
    grid = torch.stack(
        torch.broadcast_tensors(
            coords[2][:, None, None, :], coords[1][:, None, :, None], coords[0][:, :, None, None]
        ),
        dim=-1,
    )
    mask = valid[0][:, :, None, None] & valid[1][:, None, :, None] & valid[2][:, None, None, :]
    batch = rois[:, 0].long()
    order = torch.argsort(batch, stable=True)
    pieces = []
    for b in range(input.shape[0]):
        idx = order[batch[order] == b]
        if len(idx) == 0:
            continue
        g = grid[idx].reshape(1, len(idx) * d, h, w, 3)
        out = F.grid_sample(input[b : b + 1], g, mode="bilinear", align_corners=True)
        pieces.append(out.reshape(input.shape[1], len(idx), d, h, w).transpose(0, 1))
    samples = torch.cat(pieces)[torch.argsort(order)] * mask[:, None]
    od, oh, ow = output_size
    return samples.reshape(k, -1, od, r, oh, r, ow, r).mean(dim=(3, 5, 7))


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_nms(repeats):
    rows = []
    cases = [("objects", n, object_proposals) for n in (1000, 5000, 10000, 20000)]
    cases.append(("sparse", 10000, uniform_boxes))
    for name, n, make in cases:
        boxes, scores = make(n)
        keep = nms(boxes, scores, 0.5)
        ref = greedy_nms_torch(boxes, scores, 0.5)
        assert torch.equal(keep, ref), f"nms differs from the reference on {name} n={n}"
        reps = repeats if name == "objects" else 1
        t_ops = median_time(lambda: nms(boxes, scores, 0.5), max(reps, 5))
        t_ref = median_time(lambda: greedy_nms_torch(boxes, scores, 0.5), reps)
        rows.append((f"nms 3D {name} N={n} (kept {len(keep)})", t_ops, t_ref))
    return rows


def bench_roi_align(repeats):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 64, 32, 64, 64, generator=g)
    image_size = torch.tensor([256.0, 256.0, 128.0])  # x, y, z extent of the volume
    k = 512
    sides = 16 + torch.rand(k, 3, generator=g) * 48
    lo = torch.rand(k, 3, generator=g) * (image_size - sides)
    batch = torch.randint(0, 2, (k, 1), generator=g).float()
    rois = torch.cat([batch, lo, lo + sides], dim=1)
    args = ((7, 7, 7), 0.25, 2, True)
    grad = torch.randn(k, 64, 7, 7, 7, generator=g)

    def run(fn):
        x = features.clone().requires_grad_(True)
        out = fn(x, rois, *args)
        out.backward(grad)
        return out.detach(), x.grad

    out, gin = run(roi_align)
    out_ref, gin_ref = run(grid_sample_roi_align)
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gin, gin_ref, rtol=1e-4, atol=1e-4)
    t_ops = median_time(lambda: run(roi_align), repeats)
    t_ref = median_time(lambda: run(grid_sample_roi_align), repeats)
    return [("roi_align 3D fwd+bwd K=512 (7,7,7) sr=2", t_ops, t_ref)]


def bench_resize(repeats):
    x = torch.randn(2, 8, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    size = (64, 64, 64)
    grad = torch.randn(2, 8, *size, generator=torch.Generator().manual_seed(1))

    def run(fn):
        xi = x.clone().requires_grad_(True)
        out = fn(xi)
        out.backward(grad)
        return out.detach(), xi.grad

    def trilinear(xi):
        return F.interpolate(xi, size=size, mode="trilinear", align_corners=False)

    out, gin = run(lambda xi: resize_linear(xi, size))
    out_ref, gin_ref = run(trilinear)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gin, gin_ref, rtol=1e-4, atol=1e-4)
    t_ops = median_time(lambda: run(lambda xi: resize_linear(xi, size)), max(repeats, 5))
    t_ref = median_time(lambda: run(trilinear), max(repeats, 5))
    return [("resize_linear 3D fwd+bwd (2,8,16^3)->64^3", t_ops, t_ref)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = bench_nms(args.repeats) + bench_roi_align(args.repeats) + bench_resize(args.repeats)
    print_speed_table(rows, args.repeats)


def print_speed_table(rows, repeats, ref="torch ref", width=44):
    """Prints ``(case, det3d seconds, reference seconds)`` rows as milliseconds and a ratio."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {repeats}")
    w = len(ref) + 6
    print(f"{'case':<{width}} {'det3d (ms)':>11} {ref + ' (ms)':>{w}} {'speed-up':>9}")
    for name, t_ops, t_ref in rows:
        print(f"{name:<{width}} {t_ops * 1e3:>11.2f} {t_ref * 1e3:>{w}.2f} {t_ref / t_ops:>8.1f}x")


if __name__ == "__main__":
    main()
