"""
Helpers for multi-process (DDP) training on top of ``torch.distributed``.

Every function works, and does the obvious thing, when ``torch.distributed`` is not initialised
(a single process): world size 1, rank 0, gathers return ``[data]``.
"""

import functools
from typing import Any, Dict, List

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "get_world_size",
    "get_rank",
    "get_local_rank",
    "get_local_size",
    "is_main_process",
    "synchronize",
    "all_gather",
    "gather",
    "shared_random_seed",
    "reduce_dict",
    "create_local_process_group",
]

# Process group of the processes on this machine; set by ``create_local_process_group``.
_LOCAL_PROCESS_GROUP = None
_MISSING_LOCAL_PG_ERROR = (
    "Local process group is not yet created! Please use det3d's `launch()` to start processes "
    "and initialize pytorch process group. If you need to start processes in other ways, please "
    "call comm.create_local_process_group(num_workers_per_machine) after calling "
    "torch.distributed.init_process_group()."
)


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if _is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if _is_dist() else 0


@functools.lru_cache()
def create_local_process_group(num_workers_per_machine: int) -> None:
    """
    Creates the process group of the processes on this machine (used by ``get_local_rank``).
    Must be called by every process, after ``init_process_group``.
    """
    global _LOCAL_PROCESS_GROUP
    assert _LOCAL_PROCESS_GROUP is None
    assert get_world_size() % num_workers_per_machine == 0, (
        f"world size {get_world_size()} is not a multiple of {num_workers_per_machine} "
        "processes per machine"
    )
    num_machines = get_world_size() // num_workers_per_machine
    machine_rank = get_rank() // num_workers_per_machine
    for i in range(num_machines):
        ranks_on_i = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
        pg = dist.new_group(ranks_on_i)  # every process takes part in every new_group call
        if i == machine_rank:
            _LOCAL_PROCESS_GROUP = pg


def get_local_process_group():
    assert _LOCAL_PROCESS_GROUP is not None, _MISSING_LOCAL_PG_ERROR
    return _LOCAL_PROCESS_GROUP


def get_local_rank() -> int:
    """Rank of this process among the processes of its machine."""
    if not _is_dist():
        return 0
    if _LOCAL_PROCESS_GROUP is None:
        # torchrun and friends export LOCAL_RANK; fall back to it before giving up.
        import os

        if "LOCAL_RANK" in os.environ:
            return int(os.environ["LOCAL_RANK"])
        raise RuntimeError(_MISSING_LOCAL_PG_ERROR)
    return dist.get_rank(group=_LOCAL_PROCESS_GROUP)


def get_local_size() -> int:
    """Number of processes on this machine."""
    if not _is_dist():
        return 1
    if _LOCAL_PROCESS_GROUP is None:
        import os

        if "LOCAL_WORLD_SIZE" in os.environ:
            return int(os.environ["LOCAL_WORLD_SIZE"])
        raise RuntimeError(_MISSING_LOCAL_PG_ERROR)
    return dist.get_world_size(group=_LOCAL_PROCESS_GROUP)


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """A barrier across all processes; a no-op in a single process."""
    if get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL and torch.cuda.is_available():
        # Without device_ids, NCCL may pick a wrong GPU for the barrier's tensor.
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@functools.lru_cache()
def _get_global_gloo_group():
    """A gloo group over all ranks: object gathers go through CPU even when training on NCCL."""
    if dist.get_backend() == dist.Backend.NCCL:
        return dist.new_group(backend="gloo")
    return dist.group.WORLD


def all_gather(data: Any, group=None) -> List[Any]:
    """
    Gathers any picklable object from every rank.

    Returns:
        list: ``data`` of every rank of ``group``, in rank order.
    """
    if get_world_size() == 1:
        return [data]
    if group is None:
        group = _get_global_gloo_group()
    world_size = dist.get_world_size(group)
    if world_size == 1:
        return [data]
    output = [None for _ in range(world_size)]
    dist.all_gather_object(output, data, group=group)
    return output


def gather(data: Any, dst: int = 0, group=None) -> List[Any]:
    """
    Gathers any picklable object to rank ``dst``.

    Returns:
        list: on ``dst``, ``data`` of every rank in rank order; ``[]`` on the other ranks.
    """
    if get_world_size() == 1:
        return [data]
    if group is None:
        group = _get_global_gloo_group()
    world_size = dist.get_world_size(group=group)
    if world_size == 1:
        return [data]
    rank = dist.get_rank(group=group)
    if rank == dst:
        output = [None for _ in range(world_size)]
        dist.gather_object(data, output, dst=dst, group=group)
        return output
    dist.gather_object(data, None, dst=dst, group=group)
    return []


def shared_random_seed() -> int:
    """
    Returns:
        int: a random number that is the same on all ranks (rank 0's draw). All ranks must call
        this function together.
    """
    ints = np.random.randint(2**31)
    return all_gather(ints)[0]


def reduce_dict(
    input_dict: Dict[str, torch.Tensor], average: bool = True
) -> Dict[str, torch.Tensor]:
    """
    Reduces the scalar tensors of ``input_dict`` across ranks, so that rank 0 holds the sum (or
    the mean, with ``average``). Other ranks' results are not meaningful.

    Args:
        input_dict (dict[str, Tensor]): scalar tensors, same keys on every rank.
    """
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict.keys())  # same order on every rank
        values = torch.stack([input_dict[k] for k in names], dim=0)
        dist.reduce(values, dst=0)
        if dist.get_rank() == 0 and average:
            values /= world_size
        return {k: v for k, v in zip(names, values)}
