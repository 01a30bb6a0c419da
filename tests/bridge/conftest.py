"""Tests of det3d as a Detectron2 plugin; each module skips where detectron2 is not importable."""

import logging

import pytest


@pytest.fixture(scope="module")
def restore_loggers():
    """Detectron2's default_setup / DefaultTrainer set up loggers; undo it afterwards."""
    names = ("det3d", "fvcore", "detectron2")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names}
    yield
    for n, (handlers, propagate) in saved.items():
        logging.getLogger(n).handlers[:] = handlers
        logging.getLogger(n).propagate = propagate
