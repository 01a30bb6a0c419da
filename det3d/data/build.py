"""
Data loaders: records from the catalog -> mapped model inputs, batched as ``list[dict]``.

Reproducibility: the training stream is fixed by one seed (``cfg.SEED``, or a random seed shared
by all ranks when negative). The sampler's order comes from it, and before mapping the sample at
stream position ``p`` the loader calls ``mapper.reseed(seed_of(seed, p))`` (where the mapper has
``reseed``), so the same seed gives the same batches whatever the worker processes do.
"""

import logging
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch.utils.data as torchdata

from det3d.config import configurable
from det3d.utils import comm
from det3d.utils.env import seed_all_rng

from .catalog import DatasetCatalog
from .dataset_mapper import DATASET_MAPPER_REGISTRY, DatasetMapper3D
from .slice_mapper import SliceDatasetMapper  # noqa: F401 (registers it)
from .detection_utils import is_sparse_record, record_has_instances
from .samplers import InferenceSampler, TrainingSampler

__all__ = [
    "get_detection_dataset_dicts",
    "build_detection_train_loader",
    "build_detection_test_loader",
    "sample_seed",
    "trivial_batch_collator",
]

logger = logging.getLogger(__name__)


def trivial_batch_collator(batch: list) -> list:
    """Keeps a batch as the list of per-volume dicts the models take."""
    return batch


def sample_seed(base_seed: int, position: int) -> int:
    """The augmentation seed of the sample at ``position`` of a stream seeded by ``base_seed``."""
    return int(np.random.SeedSequence([int(base_seed) % 2**63, int(position)]).generate_state(1)[0])


def get_detection_dataset_dicts(
    names: Union[str, Sequence[str]], filter_empty: bool = True, keep_sparse: bool = False
) -> List[dict]:
    """
    Concatenates the records of one or more registered datasets.

    Args:
        filter_empty: drop volumes without any instance and records with sparse ground truth
            (``seg_slices``, not usable for training), logging how many were dropped.
        keep_sparse: with ``filter_empty``, keep sparse records that annotate some instance
            (for a mapper that trains on their annotated slices, e.g. ``SliceDatasetMapper``).

    Raises:
        KeyError: an unknown dataset name (the message lists the registered ones).
        ValueError: a dataset has no records, or nothing is left after filtering.
    """
    if isinstance(names, str):
        names = [names]
    if len(names) == 0:
        raise ValueError("get_detection_dataset_dicts: no dataset names given")
    records = []
    for name in names:
        recs = DatasetCatalog.get(name)
        if len(recs) == 0:
            raise ValueError(f"Dataset {name!r} is empty")
        records.extend(recs)
    if filter_empty:
        sparse = [r for r in records if is_sparse_record(r) and not keep_sparse]
        if sparse:
            logger.warning(
                f"Dropped {len(sparse)} volumes of {list(names)} whose ground truth covers only some "
                f"z-slices (seg_slices); they are for evaluation only"
            )
        kept = [r for r in records if keep_sparse or not is_sparse_record(r)]
        has = [record_has_instances(r) for r in kept]
        # name the label files: they are what is empty
        empty = [r.get("instance_label_file") or r["file_name"] for r, h in zip(kept, has) if not h]
        if empty:
            logger.info(
                f"Removed {len(empty)} of {len(kept)} volumes of {list(names)} without instances, "
                f"e.g. {empty[:3]}"
            )
        kept = [r for r, h in zip(kept, has) if h]
        if not kept:
            raise ValueError(
                f"No volume of {list(names)} has any instance to train on (empty label volumes: "
                f"{empty[:5]}{' ...' if len(empty) > 5 else ''}; sparse: {len(sparse)})"
            )
        records = kept
    return records


class _TrainStream(torchdata.IterableDataset):
    """
    Maps the sampler's ``(position, index)`` stream; worker ``k`` of ``n`` takes every ``n``-th
    item. A mapper returning None skips that sample. A mapper whose ``mosaic_volumes`` is ``m`` >
    1 gets ``m`` consecutive records of the stream at a time (``mapper.map_mosaic(records)``),
    reseeded from the first one's position.
    """

    def __init__(self, records: List[dict], sampler: TrainingSampler, mapper: Callable):
        self.records = records
        self.sampler = sampler
        self.mapper = mapper

    def _items(self):
        per_sample = int(getattr(self.mapper, "mosaic_volumes", 1))
        group = []
        for position, idx in self.sampler:
            group.append((position, idx))
            if len(group) == per_sample:
                yield group
                group = []

    def __iter__(self):
        info = torchdata.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reseed = getattr(self.mapper, "reseed", None)
        for k, group in enumerate(self._items()):
            if k % num_workers != worker:
                continue
            if reseed is not None:
                reseed(sample_seed(self.sampler.seed, group[0][0]))
            if len(group) == 1:
                out = self.mapper(self.records[group[0][1]])
            else:
                out = self.mapper.map_mosaic([self.records[idx] for _, idx in group])
            if out is not None:
                yield out


class _MapDataset(torchdata.Dataset):
    def __init__(self, records: List[dict], mapper: Callable):
        self.records, self.mapper = records, mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        return self.mapper(self.records[i])


class _WorkerInit:
    """Seeds python/numpy/torch in each worker from the loader seed and the worker id."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        seed_all_rng((self.seed + 1000003 * (worker_id + 1)) % 2**31)


def _train_loader_from_config(cfg, mapper=None, *, dataset=None, sampler=None):
    if mapper is None:
        mapper = DATASET_MAPPER_REGISTRY.get(cfg.DATALOADER.TRAIN_MAPPER)(cfg, True)
    # the stream groups records by the mapper's own count (_TrainStream): it must be the config's
    joins = getattr(mapper, "mosaic_volumes", 1)
    if joins != cfg.INPUT.MOSAIC.NUM_VOLUMES:
        what = f"joins {joins} volumes" if hasattr(mapper, "map_mosaic") else "has no map_mosaic"
        raise ValueError(
            f"INPUT.MOSAIC.NUM_VOLUMES is {cfg.INPUT.MOSAIC.NUM_VOLUMES}, but the training mapper "
            f"{type(mapper).__name__} (DATALOADER.TRAIN_MAPPER {cfg.DATALOADER.TRAIN_MAPPER!r}) "
            f"{what}; set it to {joins}"
        )
    if dataset is None:
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            keep_sparse=getattr(mapper, "trains_on_sparse_records", False),
        )
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r} is not supported; "
            f"det3d has 'TrainingSampler'"
        )
    return {
        "dataset": dataset,
        "mapper": mapper,
        "sampler": sampler,
        "total_batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "seed": cfg.SEED,
    }


@configurable(from_config=_train_loader_from_config)
def build_detection_train_loader(
    dataset: List[dict],
    *,
    mapper: Callable,
    sampler: Optional[TrainingSampler] = None,
    total_batch_size: int,
    num_workers: int = 0,
    seed: Optional[int] = None,
) -> torchdata.DataLoader:
    """
    An infinite loader of training batches, each a ``list[dict]`` of ``total_batch_size //
    world_size`` mapped records. Call as ``build_detection_train_loader(cfg)`` (datasets
    ``cfg.DATASETS.TRAIN``, the mapper ``DATALOADER.TRAIN_MAPPER`` names (default
    ``DatasetMapper3D(cfg, True)``), ``cfg.SOLVER.IMS_PER_BATCH``, ``cfg.DATALOADER.NUM_WORKERS``,
    seed ``cfg.SEED``) or with the keyword arguments.

    Args:
        dataset: records (list[dict]).
        mapper: record -> dict (or None to skip); ``mapper.reseed(int)`` is used where present.
            From a config: ``DATALOADER.TRAIN_MAPPER`` of ``DATASET_MAPPER_REGISTRY``.
        sampler: a :class:`TrainingSampler` over ``dataset`` (default: shuffled, seeded).
        seed: None or negative: a random seed shared by all ranks.
    """
    world_size = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world_size != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({total_batch_size}) must be a positive multiple of the number "
            f"of processes ({world_size})"
        )
    if sampler is None:
        sampler = TrainingSampler(len(dataset), shuffle=True, seed=seed)
    stream = _TrainStream(dataset, sampler, mapper)
    return torchdata.DataLoader(
        stream,
        batch_size=total_batch_size // world_size,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        worker_init_fn=_WorkerInit(sampler.seed),
    )


def build_detection_test_loader(
    cfg=None,
    dataset_name: Union[str, Sequence[str], None] = None,
    mapper: Optional[Callable] = None,
    num_workers: int = 0,
    *,
    dataset: Optional[List[dict]] = None,
) -> torchdata.DataLoader:
    """
    An ordered, single pass over a dataset (sharded by rank), batch size 1, each batch a
    one-element ``list[dict]``.

    Call as ``build_detection_test_loader(cfg, "name")``, ``build_detection_test_loader("name")``
    (default config mapper) or with ``dataset=records, mapper=...``. Records are not filtered.
    """
    if isinstance(cfg, str) or (isinstance(cfg, (list, tuple)) and cfg and isinstance(cfg[0], str)):
        cfg, dataset_name = None, cfg
    if dataset is None:
        if dataset_name is None:
            raise ValueError("build_detection_test_loader: give a dataset name or dataset=records")
        dataset = get_detection_dataset_dicts(dataset_name, filter_empty=False)
    if mapper is None:
        if cfg is None:
            from det3d.config import get_cfg

            cfg = get_cfg()
        mapper = DatasetMapper3D(cfg, False)
    return torchdata.DataLoader(
        _MapDataset(dataset, mapper),
        batch_size=1,
        sampler=InferenceSampler(len(dataset)),
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
    )
