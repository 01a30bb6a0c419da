"""Process-wide environment set-up: random seeds."""

import logging
import os
import random
from datetime import datetime
from typing import Optional

import numpy as np
import torch

__all__ = ["seed_all_rng"]


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
