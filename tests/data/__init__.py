from det3d.data import DatasetCatalog


def register_records(name: str, records) -> None:
    """Registers ``records`` as dataset ``name`` (replacing one of that name)."""
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: list(records))


def keep_raw_values(cfg, flips: bool = True):
    """
    Turns off the input pipeline's intensity changes and normalisation (and, with ``flips=False``,
    flips and quarter turns) in ``cfg``, so a test can read where each voxel came from.
    """
    cfg.INPUT.NORM_PERCENTILES = []
    cfg.INPUT.INTENSITY_SCALE = [1.0, 1.0]
    cfg.INPUT.INTENSITY_SHIFT = [0.0, 0.0]
    cfg.INPUT.GAMMA = [1.0, 1.0]
    cfg.INPUT.NOISE_STD = 0.0
    if not flips:
        cfg.INPUT.RANDOM_FLIP_AXES = []
        cfg.INPUT.ROTATE90_XY = False
    return cfg
