import logging

import pytest


@pytest.fixture(scope="module")
def restore_det3d_loggers():
    """default_setup / DefaultTrainer set up the det3d and fvcore loggers; undo it afterwards."""
    names = ("det3d", "fvcore")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names}
    yield
    for n, (handlers, propagate) in saved.items():
        logging.getLogger(n).handlers[:] = handlers
        logging.getLogger(n).propagate = propagate
