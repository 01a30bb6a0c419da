"""Samplers: an infinite shuffled stream for training, an ordered sharded pass for inference."""

import itertools
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data.sampler import Sampler

from det3d.utils import comm

__all__ = ["TrainingSampler", "InferenceSampler"]


class TrainingSampler(Sampler):
    """
    An infinite stream of indices: one permutation of ``range(size)`` after another (or indices
    in order when ``shuffle=False``). Every rank draws the same stream from ``seed`` and keeps
    every ``world_size``-th index starting at its rank, so ranks see disjoint samples.

    Each yielded item is ``(position, index)`` where ``position`` counts the whole (unsharded)
    stream; the loader derives each sample's augmentation seed from it.
    """

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: Optional[int] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ):
        if size <= 0:
            raise ValueError(f"TrainingSampler(size={size}): the dataset is empty")
        self._size = int(size)
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None or seed < 0 else seed)
        self._rank = comm.get_rank() if rank is None else rank
        self._world_size = comm.get_world_size() if world_size is None else world_size

    @property
    def seed(self) -> int:
        return self._seed

    def __iter__(self) -> Iterator:
        return itertools.islice(self._infinite(), self._rank, None, self._world_size)

    def _infinite(self):
        g = torch.Generator()
        g.manual_seed(self._seed)
        position = 0
        while True:
            order = (
                torch.randperm(self._size, generator=g)
                if self._shuffle
                else torch.arange(self._size)
            )
            for idx in order.tolist():
                yield position, idx
                position += 1


class InferenceSampler(Sampler):
    """
    Every index exactly once, in order, split into contiguous shards by rank (the first ranks
    take one more where ``size`` does not divide evenly).
    """

    def __init__(self, size: int, rank: Optional[int] = None, world_size: Optional[int] = None):
        self._size = int(size)
        rank = comm.get_rank() if rank is None else rank
        world_size = comm.get_world_size() if world_size is None else world_size
        shard = [len(a) for a in np.array_split(np.arange(self._size), world_size)]
        begin = sum(shard[:rank])
        self._local_indices = range(begin, begin + shard[rank])

    def __iter__(self):
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)
