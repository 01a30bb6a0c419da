"""
``launch``: runs a function in one process per device, with ``torch.distributed`` set up.

* GPUs: one process per GPU, NCCL backend.
* CPU only: ``num_gpus_per_machine`` processes on the CPU, gloo backend (for tests and laptops).
* Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` in the environment): the process
  group is initialised from the environment and nothing is spawned.
"""

import logging
import os
import socket
import time
from datetime import timedelta
from typing import Any, Callable, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from det3d.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "DEFAULT_JOIN_TIMEOUT", "launch", "find_free_port"]

DEFAULT_TIMEOUT = timedelta(minutes=30)
# How long the processes wait for each other to join at dist_url: a machine that never starts
# ends the others with an error naming the URL instead of a hang as long as DEFAULT_TIMEOUT.
DEFAULT_JOIN_TIMEOUT = timedelta(minutes=10)
logger = logging.getLogger(__name__)


def find_free_port() -> int:
    """A TCP port on this machine that is free now (it may be taken again before it is used)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


def _started_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    join_timeout: timedelta = DEFAULT_JOIN_TIMEOUT,
) -> None:
    """
    Runs ``main_func(*args)`` in ``num_machines * num_gpus_per_machine`` processes.

    Args:
        main_func: the function to run in every process.
        num_gpus_per_machine (int): processes on this machine (one per GPU; CPU processes when
            CUDA is not available).
        num_machines (int): machines taking part.
        machine_rank (int): rank of this machine.
        dist_url (str): ``tcp://host:port`` of the rank-0 process that all processes connect to;
            ``"auto"`` or None picks a free port on 127.0.0.1 (single machine only).
        args (tuple): arguments of ``main_func``.
        timeout: of collective operations.
        join_timeout: how long every process waits for all ``num_machines *
            num_gpus_per_machine`` processes to join at ``dist_url``; then a ``TimeoutError``
            naming the URL and how many joined.
    """
    if _started_by_torchrun():
        _init_from_env(timeout)
        main_func(*args)
        return

    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError('dist_url="auto" works on one machine only; give tcp://<host>:<port>')
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// dist_url works across machines only on a shared file system")
    mp.start_processes(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            world_size,
            num_gpus_per_machine,
            machine_rank,
            dist_url,
            args,
            timeout,
            join_timeout,
        ),
        daemon=False,
        start_method="spawn",
    )


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _limit_cpu_threads(processes_on_machine: int) -> None:
    # Several CPU workers on one machine would otherwise each start one thread per core.
    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes_on_machine))


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Tuple,
    timeout: timedelta,
    join_timeout: timedelta = DEFAULT_JOIN_TIMEOUT,
) -> None:
    has_gpu = torch.cuda.is_available()
    if has_gpu and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"{num_gpus_per_machine} processes per machine asked for, but only "
            f"{torch.cuda.device_count()} GPUs are visible"
        )
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    finished = False
    try:
        store = _join(dist_url, global_rank, world_size, join_timeout)
        dist.init_process_group(
            backend=_backend(),
            store=store,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception as e:
        logging.getLogger(__name__).error(f"Process group URL: {dist_url}")
        raise e
    try:
        comm.create_local_process_group(num_gpus_per_machine)
        if has_gpu:
            torch.cuda.set_device(local_rank)
        else:
            _limit_cpu_threads(num_gpus_per_machine)
        # Every process reaches this point before any starts work (catches set-up failures).
        comm.synchronize()
        main_func(*args)
        finished = True
    finally:
        dist.destroy_process_group()
    if finished:
        _leave(store, global_rank, world_size, join_timeout)


def _leave(store, rank: int, world_size: int, timeout: timedelta) -> None:
    """
    Rank 0 serves the rendezvous store: it returns (and its process, with the store, exits) only
    once every process has torn down its process group, which may still talk to the store. Without
    this wait a worker was once seen to abort (SIGABRT) at exit after its work had finished.
    """
    store.add("det3d/left", 1)
    if rank != 0:
        return
    deadline = time.monotonic() + timeout.total_seconds()
    while int(store.add("det3d/left", 0)) < world_size and time.monotonic() < deadline:
        time.sleep(0.05)


def _join(dist_url: str, rank: int, world_size: int, join_timeout: timedelta):
    """
    The rendezvous store at ``dist_url``, once all ``world_size`` processes have joined it.

    Raises:
        TimeoutError naming the URL and how many processes joined, after ``join_timeout``.
    """
    if not dist_url.startswith("tcp://"):  # file:// and others: torch's own rendezvous
        store, _, _ = next(dist.rendezvous(dist_url, rank, world_size, timeout=join_timeout))
        return store
    host, _, port = dist_url[len("tcp://") :].rstrip("/").rpartition(":")
    seconds = join_timeout.total_seconds()
    deadline = time.monotonic() + seconds
    joined = 0

    def fail(cause: str) -> TimeoutError:
        return TimeoutError(
            f"Process {rank} of {world_size}: the processes did not all join at --dist-url "
            f"{dist_url} within {seconds:g} s (--dist-join-timeout; {joined} of {world_size} "
            f"joined). Is every machine started with --num-machines, its own --machine-rank and "
            f"this --dist-url, and is the port reachable from all of them? ({cause})"
        )

    try:
        # rank 0 serves the store; the others connect, retrying until join_timeout
        store = dist.TCPStore(
            host, int(port), world_size, is_master=rank == 0, timeout=join_timeout,
            wait_for_workers=False,
        )  # fmt: skip
        joined = int(store.add("det3d/joined", 1))
        while joined < world_size:
            if time.monotonic() > deadline:
                raise fail("timed out")
            time.sleep(0.05)
            joined = int(store.add("det3d/joined", 0))
    except TimeoutError:
        raise
    except Exception as e:  # connection refused until the deadline, store errors, ...
        raise fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    return store


def _init_from_env(timeout: timedelta) -> None:
    """Process group for a process started by torchrun (or any launcher exporting the env vars)."""
    if dist.is_initialized():
        return
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=_backend(), init_method="env://", timeout=timeout)
    comm.create_local_process_group(local_world_size)
    if not torch.cuda.is_available():
        _limit_cpu_threads(local_world_size)
    comm.synchronize()
