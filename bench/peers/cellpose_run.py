"""
Cellpose 3 trained from scratch, the peer of ``bench/peers.py``. Runs in the peers' scratch venv
(``cellpose==3.1.1.2``, ``torch==2.13.0``), not in det3d's:

.. code-block:: none

    python bench/peers/cellpose_run.py --manifest run/manifest.json --output run/cellpose \\
        --minutes 30 --threads 2

Training (all of it inside ``--minutes``, measured from the first volume read to the saved model):

* Cellpose's network is 2D. As ``cellpose/gui/make_train.py`` prepares 3D data, each training
  volume gives YX, ZY and ZX slices (up to ``--slices-per-axis`` of each, evenly spaced among the
  slices that cut an object); ZY/ZX slices are resized along z by the anisotropy
  ``spacing_z / spacing_x`` (labels with nearest-neighbour), so that 3D inference, which runs the
  same network on all three orientations, sees what it was trained on.
* The flows are computed once (``dynamics.labels_to_flows``); then ``train.train_seg`` trains a
  fresh ``CellposeModel(pretrained_model=False, model_type=None)`` with the settings of
  Cellpose's command line for training from scratch (SGD, learning rate 0.2, weight decay 1e-5,
  batch 8, grayscale ``channels=[0, 0]``), except ``min_train_masks=1`` (a slice through a
  sparse volume rarely cuts 5 objects, Cellpose's default minimum) and ``diam_mean``: Cellpose's
  docs let a model trained from scratch choose it, and ``--diam-mean auto`` sets it to the mean
  object diameter of the training slices (about 11 px on both families), so that nothing is
  rescaled. With the default 30, every test volume is resized by about 2.7 per axis before the
  network sees it (20 times the voxels): 336 s per 32x96x96 volume in 3D mode on one core.
* Time box: ``train_seg`` runs whole epochs and sets its learning-rate schedule from
  ``n_epochs``, so the epochs are chosen before training. A first one-batch run pays the one-time
  costs and is left out of the estimate (as the first timed probe, it once made the estimate half
  the true seconds per batch, and training ran twice its budget); then two short probe runs (1
  and 13 batches) measure the seconds per batch and the fixed cost of a ``train_seg`` call. The
  remaining budget gives the number of batches, split into ``n_epochs`` epochs of
  ``nimg_per_epoch`` images (about 200 epochs when the budget allows, so that the warm-up and the
  final learning-rate decay of ``train_seg`` keep their shape).
* Crops: ``bsize`` is the smallest multiple of 16 that holds the training slices (96 px on the
  synthetic families) rather than Cellpose's 224, which pads each small slice to 224 x 224 and
  made a batch 5-12 times dearer (:func:`crop_size`).

Inference on each test volume, timed per volume (network + mask dynamics, not file I/O), in both
of Cellpose's 3D modes: ``do_3D=True`` (flows from YX, ZY and ZX slices averaged, dynamics in
3D, with ``anisotropy``) and 2D per slice stitched across z (``stitch_threshold``). Writes
``pred_3d/<name>.tif``, ``pred_stitch/<name>.tif``, the model under ``models/`` and
``run.json``.
"""

import argparse
import logging
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from volumes import read_labels, read_manifest, read_volume, write_json, write_labels  # noqa

BATCH_SIZE = 8
TRAIN_SETTINGS = dict(SGD=True, learning_rate=0.2, weight_decay=1e-5, batch_size=BATCH_SIZE)
TARGET_EPOCHS = 200
# batches the second probe run trains beyond the first: enough that their time stands out of the
# fixed cost of a train_seg call (with 2 more, small crops gave a difference below the noise)
PROBE_BATCHES = 12


def orthogonal_slices(image, labels, anisotropy: float, per_axis: int):
    """
    2D training pairs from one volume: YX, ZY and ZX slices that cut an object, up to
    ``per_axis`` of each (evenly spaced); ZY/ZX slices resized along z by ``anisotropy``.

    Args:
        image: (D, H, W) float32; labels: (D, H, W) int32.
    Returns:
        two lists of 2D arrays (float32 images, int32 labels).
    """
    import cv2
    from cellpose import transforms

    images, masks = [], []
    # (axes order, whether z is the slice's first axis): YX, ZY (x fixed), ZX (y fixed)
    for order, ortho in (((0, 1, 2), False), ((2, 0, 1), True), ((1, 0, 2), True)):
        img = image.transpose(order)
        lab = labels.transpose(order)
        hits = np.nonzero(lab.reshape(lab.shape[0], -1).max(axis=1) > 0)[0]
        if hits.size == 0:
            continue
        pick = np.unique(np.round(np.linspace(0, hits.size - 1, min(per_axis, hits.size))))
        idx = hits[pick.astype(int)]
        img, lab = np.ascontiguousarray(img[idx]), np.ascontiguousarray(lab[idx])
        if ortho and anisotropy != 1.0:
            lz, lx = img.shape[1:]
            new_lz = max(1, int(round(anisotropy * lz)))
            img = transforms.resize_image(img, Ly=new_lz, Lx=lx, no_channels=True)
            lab = transforms.resize_image(
                lab.astype(np.float32),
                Ly=new_lz,
                Lx=lx,
                no_channels=True,
                interpolation=cv2.INTER_NEAREST,
            ).astype(np.int32)
        images.extend(list(img.astype(np.float32)))
        masks.extend(list(lab.astype(np.int32)))
    return images, masks


def training_diameter(masks) -> float:
    """
    The mean over training slices of Cellpose's per-image diameter (``utils.diameters``, at least
    5 px), which ``train_seg`` stores as ``diam_labels``: as ``diam_mean`` it makes Cellpose's
    rescaling factor 1 in training (on average) and at inference.
    """
    from cellpose import utils

    return float(np.mean([max(5.0, float(utils.diameters(m)[0])) for m in masks]))


def new_model(diam_mean: float):
    from cellpose import models

    return models.CellposeModel(
        gpu=False, pretrained_model=False, model_type=None, diam_mean=diam_mean, nchan=2
    )


def crop_size(images) -> int:
    """
    ``train_seg``'s ``bsize`` for these slices: the smallest multiple of 16 that holds the largest
    slice side, at most Cellpose's default 224. The default pads every 64-96 px slice of the
    synthetic families to 224 x 224, 5-12 times the pixels: 5.8 s per batch on one thread, so that
    30 minutes gave 300 SGD steps and a model that predicted background everywhere.
    """
    side = max(max(im.shape[-2:]) for im in images)
    return int(min(224, -(-side // 16) * 16))


def train(images, flows, n_epochs, nimg_per_epoch, diam_mean, save_path, name):
    from cellpose import train as cp_train

    model = new_model(diam_mean)
    path = cp_train.train_seg(
        model.net,
        train_data=images,
        train_labels=flows,
        channels=[0, 0],
        normalize=True,
        n_epochs=int(n_epochs),
        nimg_per_epoch=int(nimg_per_epoch),
        min_train_masks=1,
        bsize=crop_size(images),
        save_path=save_path,
        save_every=10**9,
        model_name=name,
        **TRAIN_SETTINGS,
    )[0]
    return str(path)


def plan_epochs(batches: int):
    """``(n_epochs, nimg_per_epoch)`` for ``batches`` batches in about TARGET_EPOCHS epochs."""
    batches = max(1, int(batches))
    per_epoch = max(1, int(round(batches / TARGET_EPOCHS)))
    return max(1, batches // per_epoch), per_epoch * BATCH_SIZE


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True)
    p.add_argument("--output", required=True, help="folder for the model, predictions, run.json")
    p.add_argument("--minutes", type=float, required=True, help="training budget (wall clock)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slices-per-axis", type=int, default=16)
    p.add_argument(
        "--diam-mean",
        default="auto",
        help="Cellpose's diam_mean: 'auto' (mean object diameter of the training slices) or px",
    )
    p.add_argument("--stitch-threshold", type=float, default=0.25)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    from cellpose import dynamics, models

    m = read_manifest(args.manifest)
    spacing = [float(s) for s in m["spacing"]]
    if abs(spacing[1] - spacing[2]) > 1e-6 * spacing[2]:
        raise ValueError(f"{args.manifest}: cellpose needs equal y and x spacing, got {spacing}")
    anisotropy = spacing[0] / spacing[2]
    budget = 60.0 * args.minutes
    os.makedirs(args.output, exist_ok=True)

    t0 = time.perf_counter()
    images, masks = [], []
    for e in m["train"]:
        im, lab = orthogonal_slices(
            read_volume(e["image"]), read_labels(e["labels"]), anisotropy, args.slices_per_axis
        )
        images.extend(im)
        masks.extend(lab)
    if not images:
        raise ValueError(f"{args.manifest}: the training volumes hold no object")
    flows = dynamics.labels_to_flows(masks, device=torch.device("cpu"))
    diam_mean = training_diameter(masks) if args.diam_mean == "auto" else float(args.diam_mean)
    t_data = time.perf_counter() - t0

    probe_dir = os.path.join(args.output, "probe")
    os.makedirs(probe_dir, exist_ok=True)
    # the first call's one-time costs: counted in the budget, left out of the estimate
    train(images, flows, 1, BATCH_SIZE, diam_mean, probe_dir, "probe")
    timings = []
    for n_batches in (1, 1 + PROBE_BATCHES):
        tp = time.perf_counter()
        train(images, flows, 1, n_batches * BATCH_SIZE, diam_mean, probe_dir, "probe")
        timings.append(time.perf_counter() - tp)
    sec_per_batch = max((timings[1] - timings[0]) / PROBE_BATCHES, 1e-3)
    call_cost = max(timings[0] - sec_per_batch, 0.0)
    left = budget - (time.perf_counter() - t0) - call_cost
    n_epochs, nimg_per_epoch = plan_epochs(left / sec_per_batch)
    print(
        f"cellpose: {len(images)} training slices from {len(m['train'])} volumes "
        f"({t_data:.0f} s with flows); {sec_per_batch:.2f} s per batch of {BATCH_SIZE}, "
        f"{call_cost:.0f} s per train_seg call; {left:.0f} s left of {budget:.0f} -> "
        f"{n_epochs} epochs x {nimg_per_epoch} images",
        flush=True,
    )
    model_path = train(
        images, flows, n_epochs, nimg_per_epoch, diam_mean, args.output, "cellpose_scratch"
    )
    train_seconds = time.perf_counter() - t0
    n_slices = len(images)
    if train_seconds > budget * 1.05:
        print(f"cellpose: WARNING training took {train_seconds:.0f} s, budget {budget:.0f} s")
    bsize = crop_size(images)
    del images, masks, flows

    model = models.CellposeModel(gpu=False, pretrained_model=model_path, nchan=2)
    modes = {
        "3d": dict(do_3D=True, anisotropy=anisotropy),
        "stitch": dict(do_3D=False, stitch_threshold=args.stitch_threshold),
    }
    results = {}
    for mode, kwargs in modes.items():
        seconds = {}
        for e in m["test"]:
            vol = read_volume(e["image"])
            ti = time.perf_counter()
            labels = model.eval(vol, channels=[0, 0], z_axis=0, **kwargs)[0]
            seconds[e["name"]] = time.perf_counter() - ti
            labels = np.asarray(labels, dtype=np.int32).reshape(vol.shape)
            write_labels(os.path.join(args.output, f"pred_{mode}", e["name"] + ".tif"), labels)
            n, sec = int(labels.max()), seconds[e["name"]]
            print(f"cellpose {mode} {e['name']}: {n} objects, {sec:.1f} s", flush=True)
        results[mode] = {"pred": f"pred_{mode}", "seconds_per_volume": seconds, **kwargs}

    import importlib.metadata as md

    write_json(
        os.path.join(args.output, "run.json"),
        {
            "method": "cellpose",
            "modes": results,
            "train_seconds": train_seconds,
            "budget_seconds": budget,
            "threads": args.threads,
            "model": model_path,
            "training": {
                "slices": n_slices,
                "data_seconds": t_data,
                "seconds_per_batch": sec_per_batch,
                "n_epochs": n_epochs,
                "nimg_per_epoch": nimg_per_epoch,
                "slices_per_axis": args.slices_per_axis,
                "anisotropy": anisotropy,
                "diam_mean": diam_mean,
                "min_train_masks": 1,
                "bsize": bsize,
                **{k: v for k, v in TRAIN_SETTINGS.items()},
            },
            "versions": {p: md.version(p) for p in ("cellpose", "torch", "numpy")},
        },
    )


if __name__ == "__main__":
    main()
