"""Process-wide environment set-up: random seeds, the device a config asks for."""

import logging
import os
import random
from datetime import datetime
from typing import Optional

import numpy as np
import torch

__all__ = ["seed_all_rng", "resolve_device"]


def seed_all_rng(seed: Optional[int] = None) -> int:
    """
    Seeds the RNGs of python, numpy and torch.

    Args:
        seed (int): the seed; None or negative: a strong random seed, which is logged so that the
            run can be repeated.

    Returns:
        int: the seed used.
    """
    if seed is None or seed < 0:
        seed = (
            os.getpid()
            + int(datetime.now().strftime("%S%f"))
            + int.from_bytes(os.urandom(2), "big")
        ) % (2**31)
        logging.getLogger(__name__).info("Using a generated random seed {}".format(seed))
    np.random.seed(seed)
    torch.manual_seed(seed)
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    return seed


def resolve_device(name: str, key: str = "MODEL.DEVICE") -> torch.device:
    """
    The torch device a config names, checked against this machine.

    Args:
        name: e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        key: the config key it came from, for the error.

    Raises:
        ValueError naming ``key`` and the value: not a device name, CUDA asked of a torch built
        without CUDA or of a machine without a GPU, or a GPU index beyond those visible.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{key} {name!r} is not a device name (e.g. 'cpu', 'cuda'): {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch is built without CUDA"
                if torch.version.cuda is None
                else "no GPU is visible"
            )
            raise ValueError(f"{key} is {name!r} but {why}; set {key} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{key} is {name!r} but only {torch.cuda.device_count()} GPUs are visible"
            )
    return device
