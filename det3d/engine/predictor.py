"""
The predict pipeline: a trained model applied to a volume of any size, tile by tile.

.. code-block:: none

    read tile (memory map / zarr chunks) -> normalise with the volume's percentiles
      -> resample to INPUT.TARGET_SPACING -> model (batches of TEST.TILE.BATCH_SIZE tiles; the
      labels come back on the tile's own grid) -> select_owned -> [writer thread] TileStitcher
      paints into the zarr label store -> object rows -> progress.json committed

Tiles run in this process (:class:`SerialExecutor`) or on a ``dask.distributed`` cluster
(:class:`DaskExecutor`: each worker builds the model once and keeps it; tiles go out in a bounded
window and come back in order). Both run the same batches through the same code, and painting
happens in tile order in this process, so the labels are identical.

A volume's state lives in ``<output>/.det3d-predict/<name>/``: the label store, the partial object
table and ``progress.json`` (tiles painted, next id, table size, the run's fingerprint). A rerun of
the same command continues after the last painted tile; outputs get their final names only when
complete.
"""

import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from det3d.data.dataset_mapper import apply_intensity_bounds
from det3d.data.label_output import (
    ObjectTable,
    create_label_store,
    finalize_labels,
    label_output_path,
    open_label_store,
    replace_path,
    write_outline_montage,
)
from det3d.data.transforms import ResampleTransform
from det3d.data.volume_source import ForegroundMask, VolumeSource, intensity_bounds
from det3d.utils.axes import per_axis
from det3d.utils.file_io import write_json_atomic
from det3d.utils.memory import fix_mmap_threshold

from .tiling import (
    CUT_OBJECT_POLICIES,
    Tile,
    TileGrid,
    TileResult,
    TileStitcher,
    select_owned,
    tile_size_divisibility,
    tolerance_for,
)

__all__ = [
    "build_predict_model",
    "check_tile_config",
    "TileJob",
    "TileRunner",
    "SerialExecutor",
    "DaskExecutor",
    "VolumeTask",
    "VolumeReport",
    "predict_volume",
    "volume_state",
    "WORK_DIR",
]

logger = logging.getLogger(__name__)

WORK_DIR = ".det3d-predict"


# ------------------------------------------------------------------------------------------- #
# Model
# ------------------------------------------------------------------------------------------- #
def build_predict_model(cfg) -> torch.nn.Module:
    """
    The model of ``cfg`` with ``cfg.MODEL.WEIGHTS`` loaded, in eval mode on ``MODEL.DEVICE``.

    Raises:
        ValueError: no MODEL.WEIGHTS, or weights that leave parameters of the model unset.
        FileNotFoundError / det3d.checkpoint.CheckpointError: naming the weights file.
    """
    from det3d.checkpoint import DetectionCheckpointer
    from det3d.modeling import build_model

    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise ValueError(
            "MODEL.WEIGHTS is not set: prediction needs trained weights, e.g. "
            "MODEL.WEIGHTS output/demo/model_final.pth after the config's other overrides"
        )
    if cfg.MODEL.SPATIAL_DIMS != 3:
        raise ValueError(
            f"MODEL.SPATIAL_DIMS is {cfg.MODEL.SPATIAL_DIMS}: det3d-predict segments volumes with "
            "models that take volumes (SPATIAL_DIMS 3; 2.5D models such as SliceFusionRCNN too)"
        )
    model = build_model(cfg)
    checkpointer = DetectionCheckpointer(model)
    checkpointer.load(weights)
    missing = list(getattr(checkpointer.incompatible_keys, "missing_keys", []) or [])
    if missing:
        raise ValueError(
            f"MODEL.WEIGHTS {weights!r} does not fit the config's model "
            f"({cfg.MODEL.META_ARCHITECTURE}): {len(missing)} parameters missing, e.g. "
            f"{missing[:3]}; use the config the weights were trained with"
        )
    model.eval()
    return model


def check_tile_config(cfg, model) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """
    Checks ``TEST.TILE.*`` against the model; returns ``(size, overlap)`` per axis (D, H, W).

    Raises:
        ValueError naming the key: a size below the model's size divisibility, an overlap not
        smaller than the size, a batch size below 1, an unknown CUT_OBJECTS policy.
    """
    size = tuple(int(s) for s in per_axis(cfg.TEST.TILE.SIZE, 3, "TEST.TILE.SIZE"))
    overlap = tuple(int(o) for o in per_axis(cfg.TEST.TILE.OVERLAP, 3, "TEST.TILE.OVERLAP"))
    divisibility = tile_size_divisibility(model)
    for a, name in enumerate("zyx"):
        if size[a] < divisibility[a]:
            raise ValueError(
                f"TEST.TILE.SIZE {list(size)} is smaller than the model's size divisibility "
                f"{list(divisibility)} on axis {name}: raise TEST.TILE.SIZE to at least "
                f"{divisibility[a]} there (a multiple of it avoids padding)"
            )
        if not 0 <= overlap[a] < size[a]:
            raise ValueError(
                f"TEST.TILE.OVERLAP {list(overlap)} must be >= 0 and smaller than TEST.TILE.SIZE "
                f"{list(size)} on every axis (axis {name}: {overlap[a]} vs {size[a]})"
            )
    if cfg.TEST.TILE.BATCH_SIZE < 1:
        raise ValueError(f"TEST.TILE.BATCH_SIZE must be >= 1, got {cfg.TEST.TILE.BATCH_SIZE}")
    if cfg.TEST.TILE.CUT_OBJECTS not in CUT_OBJECT_POLICIES:
        raise ValueError(
            f"TEST.TILE.CUT_OBJECTS must be one of {CUT_OBJECT_POLICIES}, "
            f"got {cfg.TEST.TILE.CUT_OBJECTS!r}"
        )
    return size, overlap


# ------------------------------------------------------------------------------------------- #
# Running tiles
# ------------------------------------------------------------------------------------------- #
@dataclass
class TileJob:
    """
    What running tiles of one volume needs besides the model (small and picklable: Dask sends it
    to workers, which read the tiles themselves).

    Attributes:
        source: the volume.
        bounds: per-channel intensity bounds (``INPUT.NORM_PERCENTILES`` of the whole volume).
        zoom: per axis, file spacing / ``INPUT.TARGET_SPACING``; None: no resampling.
        tolerance, cut_objects: for :func:`det3d.engine.tiling.select_owned`.
        foreground_threshold: a tile whose raw intensity stays below it (every channel) is
            skipped; None: none are.
    """

    source: VolumeSource
    bounds: list
    zoom: Optional[Tuple[float, ...]]
    tolerance: Tuple[float, ...]
    cut_objects: str = "error"
    foreground_threshold: Optional[float] = None


class TileRunner:
    """Runs batches of tiles through one model: read, normalise, resample, infer, select."""

    def __init__(self, model: torch.nn.Module, device="cpu"):
        self.model = model
        self.device = torch.device(device)

    def run(self, job: TileJob, tiles: Sequence[Tile]) -> List[TileResult]:
        """Returns one :class:`TileResult` per tile, in order."""
        results, inputs, ran = {}, [], []
        for tile in tiles:
            raw = job.source.read(tile.slices)
            threshold = job.foreground_threshold
            if threshold is not None and not (raw >= threshold).any():
                results[tile.index] = TileResult(tile.index, skipped=True)
                continue
            name = f"{job.source.path} (tile {tile.index})"
            image = apply_intensity_bounds(raw, job.bounds, name)
            if job.zoom is not None:
                image = ResampleTransform(image.shape[1:], job.zoom).apply_image(image)
            depth, height, width = tile.shape
            tensor = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
            inputs.append({"image": tensor, "depth": depth, "height": height, "width": width})
            ran.append(tile)
        if inputs:
            with torch.no_grad():
                outputs = self.model(inputs)
            for tile, output in zip(ran, outputs):
                results[tile.index] = select_owned(output, tile, job.tolerance, job.cut_objects)
        return [results[t.index] for t in tiles]


class SerialExecutor:
    """Runs batches in this process, one after the other."""

    def __init__(self, runner: TileRunner):
        self.runner = runner

    def map(self, job: TileJob, batches: Sequence[List[Tile]]) -> Iterator[List[TileResult]]:
        for batch in batches:
            yield self.runner.run(job, batch)


_WORKER_RUNNERS: dict = {}


def _run_on_worker(cfg, job: TileJob, tiles: List[Tile]) -> List[TileResult]:
    """A Dask task: the worker's model (built on first use, kept for later tasks) runs ``tiles``."""
    key = cfg.dump()
    runner = _WORKER_RUNNERS.get(key)
    if runner is None:
        _WORKER_RUNNERS.clear()  # one model per worker process
        fix_mmap_threshold()  # as det3d-predict's own process
        runner = _WORKER_RUNNERS[key] = TileRunner(build_predict_model(cfg), cfg.MODEL.DEVICE)
    return runner.run(job, tiles)


class DaskExecutor:
    """
    Sends batches to a ``dask.distributed`` cluster and yields their results in order. At most
    ``window`` batches are out at a time (default: twice the workers' threads), so results
    waiting to be painted stay few.

    Args:
        client: a ``distributed.Client``.
        cfg: the config (workers build the model from it and ``MODEL.WEIGHTS``, which they must be
            able to read, as the input volumes).
    """

    def __init__(self, client, cfg, window: Optional[int] = None):
        self.client = client
        self.cfg = cfg
        threads = sum(client.nthreads().values()) or 1
        self.window = window or 2 * threads

    def map(self, job: TileJob, batches: Sequence[List[Tile]]) -> Iterator[List[TileResult]]:
        pending: deque = deque()
        todo = iter(batches)
        try:
            for batch in todo:
                pending.append(self._submit(job, batch))
                if len(pending) >= self.window:
                    break
            while pending:
                yield pending.popleft().result()
                batch = next(todo, None)
                if batch is not None:
                    pending.append(self._submit(job, batch))
        finally:
            for future in pending:
                future.cancel()

    def _submit(self, job, batch):
        return self.client.submit(_run_on_worker, self.cfg, job, batch, pure=False)


# ------------------------------------------------------------------------------------------- #
# One volume
# ------------------------------------------------------------------------------------------- #
@dataclass
class VolumeTask:
    """
    One input volume and where its outputs go.

    Attributes:
        source: the volume; name: output file stem; spacing: ``(z, y, x)`` or None; fmt: label
        format (``"tiff"``, ``"zarr"``, ``"ome-zarr"``); mask: a :class:`ForegroundMask` or None.
    """

    source: VolumeSource
    name: str
    spacing: Optional[Tuple[float, float, float]]
    fmt: str
    mask: Optional[ForegroundMask] = None

    def outputs(self, output_dir: str, montage: bool) -> List[str]:
        paths = [
            label_output_path(output_dir, self.name, self.fmt),
            os.path.join(output_dir, f"{self.name}_objects.csv"),
        ]
        if montage:
            paths.append(os.path.join(output_dir, f"{self.name}_outlines.png"))
        return paths


@dataclass
class VolumeReport:
    name: str
    input: str
    shape: Tuple[int, ...]
    tiles: int = 0
    tiles_run: int = 0
    tiles_skipped: int = 0
    resumed_at: int = 0
    objects: int = 0
    seconds: float = 0.0
    outputs: List[str] = field(default_factory=list)
    already_done: bool = False


def work_dir(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, WORK_DIR, name)


def volume_state(output_dir: str, name: str) -> Optional[dict]:
    """The ``progress.json`` of volume ``name`` in ``output_dir``, or None."""
    path = os.path.join(work_dir(output_dir, name), "progress.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def fingerprint(cfg, task: VolumeTask, foreground_threshold: Optional[float]) -> str:
    """What decides a volume's labels: a rerun continues a run only when this is the same."""

    def stat(path):
        if not os.path.exists(path):
            return path
        st = os.stat(path)
        return [os.path.abspath(path), st.st_size, st.st_mtime_ns]

    parts = {
        "config": cfg.dump(),
        "weights": stat(cfg.MODEL.WEIGHTS),
        "input": stat(task.source.path) + [list(task.source.shape), str(task.source.dtype)],
        "axes": task.source.axes,
        "spacing": task.spacing,
        "mask": stat(task.mask.path) if task.mask else None,
        "foreground_threshold": foreground_threshold,
        "format": task.fmt,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def predict_volume(
    cfg,
    task: VolumeTask,
    executor,
    output_dir: str,
    *,
    tile_size: Sequence[int],
    tile_overlap: Sequence[int],
    class_names: Sequence[str] = (),
    foreground_threshold: Optional[float] = None,
    montage: bool = False,
    progress=None,
) -> VolumeReport:
    """
    Predicts one volume into ``output_dir``, continuing an interrupted run of the same command.

    Args:
        cfg: the config (``INPUT.*``, ``TEST.TILE.*``, ``LABELS_OVERLAP_THRESH_TEST``).
        task: the volume and its output names.
        executor: :class:`SerialExecutor` or :class:`DaskExecutor`.
        tile_size, tile_overlap: per axis in model voxels (from :func:`check_tile_config`).
        class_names: names of the class indices, for the object table.
        foreground_threshold: raw intensity a tile needs somewhere to be run.
        montage: also write ``<name>_outlines.png``.
        progress: a tqdm bar (or None) advanced per tile.

    Returns:
        VolumeReport.
    """
    start_time = time.perf_counter()
    source = task.source
    shape = source.shape[1:]
    zoom = _zoom(cfg, task)
    scale = zoom or (1.0, 1.0, 1.0)
    size = tuple(max(1, round(s / z)) for s, z in zip(tile_size, scale))
    overlap = tuple(min(round(o / z), s - 1) for o, z, s in zip(tile_overlap, scale, size))
    grid = TileGrid(shape, size, overlap)
    report = VolumeReport(task.name, source.path, source.shape, tiles=len(grid))
    folder = work_dir(output_dir, task.name)
    os.makedirs(folder, exist_ok=True)
    store_path = os.path.join(folder, "labels.zarr")
    table = ObjectTable(os.path.join(folder, "objects.csv"), class_names, task.spacing or (1, 1, 1))
    print_ = fingerprint(cfg, task, foreground_threshold)
    state = volume_state(output_dir, task.name)
    if state is None or state["fingerprint"] != print_:
        _clear(folder)
        bounds = intensity_bounds(source, cfg.INPUT.NORM_PERCENTILES)
        create_label_store(store_path, shape, ome=task.fmt == "ome-zarr")
        state = {
            "fingerprint": print_,
            "input": source.path,
            "tiles": len(grid),
            "tiles_done": 0,
            "tiles_skipped": 0,
            "next_id": 1,
            "table_bytes": table.start(),
            "bounds": [[float(v) for v in b] for b in bounds],
            "complete": False,
        }
        _save_state(folder, state)
    report.resumed_at = state["tiles_done"]
    report.already_done = bool(state["complete"])
    if state["tiles_done"] < len(grid):
        logger.info(
            f"{source.path}: {len(grid)} tiles of {size} voxels (overlap {overlap})"
            + (f", continuing at tile {state['tiles_done']}" if state["tiles_done"] else "")
        )
        if not os.path.isdir(store_path):
            raise FileNotFoundError(
                f"{store_path}: the label store of an unfinished run is gone; rerun with "
                "--overwrite to start this volume afresh"
            )
        table.truncate(state["table_bytes"])
        store = open_label_store(store_path, ome=task.fmt == "ome-zarr")
        job = TileJob(
            source=source,
            # np.float64 as np.percentile gives them, so tiles are scaled with the same arithmetic
            bounds=[tuple(np.float64(v) for v in b) for b in state["bounds"]],
            zoom=zoom,
            tolerance=tolerance_for(overlap),
            cut_objects=cfg.TEST.TILE.CUT_OBJECTS,
            foreground_threshold=foreground_threshold,
        )
        _run_tiles(cfg, grid, job, task, executor, store, table, state, folder, progress, report)
    report.tiles_skipped = state["tiles_skipped"]
    report.objects = state["next_id"] - 1
    report.outputs = task.outputs(output_dir, montage)
    _finalize(task, state, folder, store_path, table, report.outputs, montage)
    report.seconds = time.perf_counter() - start_time
    return report


def _zoom(cfg, task: VolumeTask) -> Optional[Tuple[float, ...]]:
    target = tuple(float(t) for t in cfg.INPUT.TARGET_SPACING)
    if not target:
        return None
    if task.spacing is None:
        raise ValueError(
            f"{task.source.path}: the file records no voxel spacing and INPUT.TARGET_SPACING is "
            f"{list(target)}: pass --spacing z y x (micrometres)"
        )
    zoom = tuple(s / t for s, t in zip(task.spacing, target))
    return None if all(abs(z - 1.0) < 1e-9 for z in zoom) else zoom


def _batches(cfg, grid: TileGrid, first: int) -> List[List[Tile]]:
    """
    Fixed groups of TEST.TILE.BATCH_SIZE consecutive tiles (the same groups whatever tile a run
    starts at, so a resumed run feeds the model the same batches), from the group holding tile
    ``first``.
    """
    n = cfg.TEST.TILE.BATCH_SIZE
    return [list(grid.tiles[b : b + n]) for b in range(first // n * n, len(grid), n)]


def _run_tiles(cfg, grid, job, task, executor, store, table, state, folder, progress, report):
    stitcher = TileStitcher(store, state["next_id"], cfg.MODEL.ROI_HEADS.LABELS_OVERLAP_THRESH_TEST)
    first = state["tiles_done"]
    batches = _batches(cfg, grid, first)
    masked = {}
    if task.mask is not None:
        for batch in batches:
            for t in batch:
                if not task.mask.region_has_foreground(t.start, t.stop):
                    masked[t.index] = TileResult(t.index, skipped=True)
    to_run = [[t for t in b if t.index not in masked] for b in batches]
    if progress is not None:
        progress.reset(total=len(grid))
        progress.update(first)
    writer = _Writer(stitcher, table, state, folder, progress)
    results = executor.map(job, [b for b in to_run if b])
    try:
        for batch, ran in zip(batches, to_run):
            got = dict(zip([t.index for t in ran], next(results) if ran else []))
            for tile in batch:
                if tile.index < first:
                    continue  # painted before the interruption; its batch ran again for identity
                result = masked.get(tile.index) or got[tile.index]
                report.tiles_run += 0 if result.skipped else 1
                writer.put(tile, result)
        writer.close()
    finally:
        writer.stop()
        results.close()  # cancels batches still out on a cluster


class _Writer:
    """Paints results and commits progress in a thread of its own, in the order they come."""

    def __init__(self, stitcher, table, state, folder, progress):
        self.stitcher, self.table, self.state = stitcher, table, state
        self.folder, self.progress = folder, progress
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue
            try:
                tile, result = item
                records = self.stitcher.paint(tile, result)
                self.state["table_bytes"] = (
                    self.table.append(records) if records else self.state["table_bytes"]
                )
                self.state["tiles_done"] = tile.index + 1
                self.state["tiles_skipped"] += int(result.skipped)
                self.state["next_id"] = self.stitcher.next_id
                _save_state(self.folder, self.state)
                if self.progress is not None:
                    self.progress.update(1)
            except BaseException as e:  # handed to the main thread
                self.error = e

    def put(self, tile, result) -> None:
        self._raise()
        self.queue.put((tile, result))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.error = self.error or RuntimeError("stopped")
            self.queue.put(None)
            self.thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


def _clear(folder: str) -> None:
    """Empties a volume's work folder (an earlier, different run's leftovers)."""
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def _save_state(folder: str, state: dict) -> None:
    write_json_atomic(os.path.join(folder, "progress.json"), state)


def _finalize(task, state, folder, store_path, table, outputs, montage) -> None:
    """Moves a finished volume's outputs to their final names (again after an interruption)."""
    if state["complete"]:
        return
    labels_path, csv_path = outputs[0], outputs[1]
    if os.path.isdir(store_path):
        if montage:
            bounds = [tuple(np.float64(v) for v in b) for b in state["bounds"]]
            write_outline_montage(outputs[2], task.source, bounds, store_path, task.fmt)
        if os.path.isfile(table.path):
            replace_path(table.path, csv_path)
        finalize_labels(store_path, labels_path, task.fmt, task.spacing, state["next_id"] - 1)
    elif os.path.isfile(table.path):
        replace_path(table.path, csv_path)
    state["complete"] = True
    _save_state(folder, state)
    if os.path.isdir(store_path):  # TIFF output: the store was only read
        shutil.rmtree(store_path, ignore_errors=True)
