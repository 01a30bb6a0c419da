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


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """A fresh folder for the synthetic splits of a module's runs (passed as SYNTHETIC.ROOT);
    the process's synthetic root is reset afterwards, as other tests expect it."""
    from det3d.data import set_synthetic_root

    yield str(tmp_path_factory.mktemp("synthetic"))
    set_synthetic_root(None)
