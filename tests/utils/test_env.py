"""det3d.utils.env.resolve_device: a device this machine cannot run names the config key."""

import pytest
import torch

from det3d.config import get_cfg
from det3d.utils.env import resolve_device


def test_cpu_and_meta_pass():
    assert resolve_device("cpu") == torch.device("cpu")


def test_not_a_device_names_the_key_and_value():
    with pytest.raises(ValueError, match="MODEL.DEVICE 'gpu' is not a device name"):
        resolve_device("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_names_the_key():
    with pytest.raises(ValueError, match="MODEL.DEVICE is 'cuda' but .*set MODEL.DEVICE cpu"):
        resolve_device("cuda")
    # build_model asks before building anything
    from det3d.modeling import build_model

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cuda:0"
    with pytest.raises(ValueError, match="MODEL.DEVICE is 'cuda:0'"):
        build_model(cfg)
