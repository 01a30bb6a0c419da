"""
``det3d-predict`` (also ``tools/predict.py``): segments a user's own volumes with a trained model.

.. code-block:: none

    det3d-predict --config-file CFG --input vol.tif [more.tif folder/ big.zarr ...] --output DIR \\
        [--spacing Z Y X] [--format auto|tiff|zarr|ome-zarr] [--montage] [--overwrite] \\
        [--workers N | --dask-scheduler ADDRESS] [KEY VALUE ...]   (e.g. MODEL.WEIGHTS m.pth)

Per input ``<name>``: ``<name>_labels.tif`` (or ``.zarr`` / ``.ome.zarr``), ``<name>_objects.csv``
and, with ``--montage``, ``<name>_outlines.png``. Everything is checked (inputs, weights, tile
keys, outputs already there) before anything is written. Rerunning the same command continues an
interrupted run and skips finished volumes; an output folder holding other results is refused
unless ``--overwrite``.
"""

import argparse
import logging
import os
import re
import shutil
import sys
from typing import List, Optional

from det3d.checkpoint.detection_checkpoint import CheckpointError
from det3d.config import get_cfg
from det3d.data.io import check_spacing, read_spacing
from det3d.data.label_output import LABEL_FORMATS
from det3d.data.volume_source import ForegroundMask, VolumeSource
from det3d.utils.logger import setup_logger
from det3d.utils.memory import fix_mmap_threshold

from .predictor import (
    DaskExecutor,
    SerialExecutor,
    TileRunner,
    VolumeTask,
    build_predict_model,
    check_tile_config,
    predict_volume,
    volume_state,
    work_dir,
)
from .tiling import CutObjectError

__all__ = ["predict_argument_parser", "expand_inputs", "main"]

logger = logging.getLogger("det3d.predict")

_VOLUME_EXTS = (".tif", ".tiff", ".zarr")
DEFAULT_TIFF_MAX_VOXELS = 2**27  # 128 x 1024 x 1024; larger label volumes go to zarr


def predict_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="det3d-predict",
        description="Segment volumes (TIFF, zarr, OME-Zarr, or folders of them) with a trained "
        "det3d model, tile by tile, in bounded memory.",
        epilog="""
Examples:
  det3d-predict --config-file cfg.yaml --input vol.tif --output out/ MODEL.WEIGHTS model.pth
  det3d-predict --config-file cfg.yaml --input stacks/ --output out/ --montage MODEL.WEIGHTS m.pth
  det3d-predict --config-file cfg.yaml --input big.zarr --output out/ --spacing 2 0.4 0.4 \\
      --foreground-threshold 300 MODEL.WEIGHTS m.pth TEST.TILE.SIZE "[64, 512, 512]"
  det3d-predict ... --workers 4                      (a local Dask cluster of 4 processes)
  det3d-predict ... --dask-scheduler tcp://head:8786 (an existing Dask cluster)
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the model's config")
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="TIFF files, zarr arrays / OME-Zarr images (level 0), or folders of them",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the results")
    parser.add_argument(
        "--spacing",
        nargs=3,
        type=float,
        metavar=("Z", "Y", "X"),
        help="voxel spacing in micrometres (default: from each file's metadata)",
    )
    parser.add_argument("--axes", help="the inputs' axes, e.g. ZCYX (default: from the files)")
    parser.add_argument(
        "--format",
        default="auto",
        choices=("auto",) + LABEL_FORMATS,
        help="label volume format; auto: TIFF up to --tiff-max-voxels voxels, else zarr",
    )
    parser.add_argument("--tiff-max-voxels", type=int, default=DEFAULT_TIFF_MAX_VOXELS)
    parser.add_argument(
        "--foreground-threshold",
        type=float,
        metavar="VALUE",
        help="skip tiles whose raw intensity stays below VALUE everywhere",
    )
    parser.add_argument(
        "--mask",
        nargs="+",
        metavar="PATH",
        help="foreground mask volumes (any resolution), one per input: tiles where the mask is 0 "
        "are skipped",
    )
    parser.add_argument("--montage", action="store_true", help="also write an outline PNG")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace results already in --output (by default they are refused, unless they are "
        "an interrupted or finished run of the same command, which is continued)",
    )
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=int, default=0, help="start a local Dask cluster")
    cluster.add_argument("--dask-scheduler", metavar="ADDRESS", help="use this Dask cluster")
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=None,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS m.pth",
    )
    return parser


def _is_zarr_store(path: str) -> bool:
    markers = (".zarray", ".zgroup", "zarr.json")
    return path.rstrip("/").endswith(".zarr") or any(
        os.path.exists(os.path.join(path, m)) for m in markers
    )


def expand_inputs(paths: List[str]) -> List[str]:
    """Files and zarr stores as given; folders replaced by the volumes they hold (sorted)."""
    out = []
    for path in paths:
        if re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+", path) and not os.path.exists(path):
            raise ValueError(
                f"--input {path!r} looks like a config key: put KEY VALUE overrides after "
                f"--output DIR"
            )
        if not os.path.exists(path):
            raise FileNotFoundError(f"--input {path}: no such file or folder")
        if os.path.isdir(path) and not _is_zarr_store(path):
            found = sorted(
                os.path.join(path, e)
                for e in os.listdir(path)
                if e.lower().endswith(_VOLUME_EXTS) and not e.startswith(".")
            )
            if not found:
                raise ValueError(f"--input {path}: the folder holds no .tif, .tiff or .zarr volume")
            out.extend(found)
        else:
            out.append(path)
    return out


def output_name(path: str) -> str:
    """``a/vol.ome.tif`` -> ``vol``; ``b/big.zarr`` -> ``big``; ``c/x.zarr/0`` -> ``x_0``."""
    p = os.fspath(path).rstrip("/")
    if ".zarr/" in p:
        store, comp = p.split(".zarr/", 1)
        return os.path.basename(store) + "_" + comp.replace("/", "_")
    name = os.path.basename(p)
    for ext in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def setup_cfg(args):
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    return cfg


def _class_names(cfg) -> List[str]:
    from det3d.data import MetadataCatalog

    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        names = getattr(MetadataCatalog.get(name), "thing_classes", None)
        if names:
            return list(names)
    return []


def _tasks(cfg, args, inputs: List[str]) -> List[VolumeTask]:
    """Opens every input (header only) and checks it; nothing is written."""
    names = {}
    tasks = []
    masks = args.mask or []
    if masks and len(masks) != len(inputs):
        raise ValueError(
            f"--mask gives {len(masks)} masks for {len(inputs)} input volumes; give one per input"
        )
    given = check_spacing(args.spacing, "--spacing") if args.spacing else None
    if cfg.INPUT.TARGET_SPACING:
        check_spacing(cfg.INPUT.TARGET_SPACING, "INPUT.TARGET_SPACING")
    for i, path in enumerate(inputs):
        source = VolumeSource(path, args.axes)
        if source.shape[0] != cfg.INPUT.IN_CHANNELS:
            raise ValueError(
                f"{path}: the volume has {source.shape[0]} channels (shape (C, D, H, W) = "
                f"{source.shape}), the model takes INPUT.IN_CHANNELS = {cfg.INPUT.IN_CHANNELS}; "
                f"pass --axes if the file's axes were misread"
            )
        name = output_name(path)
        if name in names:
            raise ValueError(f"--input {names[name]} and {path} would both write outputs {name}_*")
        names[name] = path
        spacing = given or read_spacing(path)
        voxels = source.shape[1] * source.shape[2] * source.shape[3]
        fmt = (
            args.format
            if args.format != "auto"
            else ("tiff" if voxels <= args.tiff_max_voxels else "zarr")
        )
        mask = ForegroundMask(masks[i], source.shape[1:]) if masks else None
        tasks.append(VolumeTask(source, name, spacing, fmt, mask))
    return tasks


def _check_outputs(tasks, args) -> None:
    """Refuses an output folder holding other results (unless --overwrite)."""
    if args.overwrite:
        return
    conflicts = []
    for task in tasks:
        state = volume_state(args.output, task.name)
        if state is not None:
            continue  # decided per volume: same command -> continue, else refused below
        there = [p for p in task.outputs(args.output, args.montage) if os.path.exists(p)]
        conflicts.extend(there)
    if conflicts:
        raise FileExistsError(
            f"--output {args.output} already holds results: {', '.join(conflicts[:5])}"
            + (f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
            + "; pass --overwrite to replace them, or choose another --output"
        )


def _check_same_runs(cfg, tasks, args) -> None:
    """A volume with a run of another command (config, weights, input changed) is refused."""
    from .predictor import fingerprint

    if args.overwrite:
        return
    for task in tasks:
        state = volume_state(args.output, task.name)
        if state is not None and state["fingerprint"] != fingerprint(
            cfg, task, args.foreground_threshold
        ):
            raise FileExistsError(
                f"--output {args.output} holds a{'' if state['complete'] else 'n unfinished'} run "
                f"for {task.name} made with another config, weights, input or options "
                f"({os.path.join(work_dir(args.output, task.name), 'progress.json')}); pass "
                f"--overwrite to replace it, or choose another --output"
            )


def _executor(cfg, args, model):
    if not (args.workers or args.dask_scheduler):
        return SerialExecutor(TileRunner(model, cfg.MODEL.DEVICE)), None
    from distributed import Client, LocalCluster

    if args.dask_scheduler:
        client = Client(args.dask_scheduler)
        closers = [client]
    else:
        cluster = LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
        closers = [client, cluster]
    logger.info(f"Dask: {len(client.nthreads())} workers ({client.scheduler.address})")
    return DaskExecutor(client, cfg), closers


def run(args) -> list:
    """Runs the command of parsed ``args``; returns one VolumeReport per input volume."""
    from tqdm import tqdm

    cfg = setup_cfg(args)
    inputs = expand_inputs(args.input)
    tasks = _tasks(cfg, args, inputs)
    model = build_predict_model(cfg)
    size, overlap = check_tile_config(cfg, model)
    _check_outputs(tasks, args)
    _check_same_runs(cfg, tasks, args)
    os.makedirs(args.output, exist_ok=True)
    executor, closers = _executor(cfg, args, model)
    reports = []
    try:
        bar = tqdm(total=0, unit="tile", dynamic_ncols=True, position=1, leave=False)
        for task in tqdm(tasks, unit="volume", dynamic_ncols=True, position=0):
            bar.set_description(task.name)
            if args.overwrite and os.path.isdir(work_dir(args.output, task.name)):
                # the old outputs stay until the new ones replace them
                shutil.rmtree(work_dir(args.output, task.name))
            reports.append(
                predict_volume(
                    cfg,
                    task,
                    executor,
                    args.output,
                    tile_size=size,
                    tile_overlap=overlap,
                    class_names=_class_names(cfg),
                    foreground_threshold=args.foreground_threshold,
                    montage=args.montage,
                    progress=bar,
                )
            )
        bar.close()
    finally:
        for c in closers or []:
            c.close()
    return reports


def summary(reports) -> str:
    lines = ["det3d-predict wrote:"]
    for r in reports:
        done = (
            "already done"
            if r.already_done
            else (
                f"{r.tiles_run} tiles run, {r.tiles_skipped} skipped as background"
                + (f", continued at tile {r.resumed_at}" if r.resumed_at else "")
            )
        )
        lines.append(
            f"  {r.input} {tuple(r.shape[1:])}: {r.objects} objects; {r.tiles} tiles ({done}); "
            f"{r.seconds:.1f} s"
        )
        lines.extend(f"      {p}" for p in r.outputs if os.path.exists(p))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """The ``det3d-predict`` console script; returns the exit status."""
    args = predict_argument_parser().parse_args(argv)
    setup_logger(None, name="det3d")
    fix_mmap_threshold()  # resident memory bounded by the tile, not the number of tiles
    try:
        reports = run(args)
    except (ValueError, KeyError, OSError, CutObjectError, CheckpointError) as e:
        # errors of the user's input name the file or key at fault; no traceback needed
        print(f"det3d-predict: error: {e}", file=sys.stderr)
        return 1
    print(summary(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
