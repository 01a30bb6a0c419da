from .config import CfgNode, configurable, get_cfg
from .defaults import add_det3d_config

__all__ = ["CfgNode", "configurable", "get_cfg", "add_det3d_config"]
