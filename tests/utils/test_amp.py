"""det3d.utils.amp: the autocast dtype a config value means on each device."""

import pytest
import torch

from det3d.utils.amp import autocast, resolve_amp_dtype


def test_defaults_per_device():
    assert resolve_amp_dtype("", "cuda") == torch.float16
    assert resolve_amp_dtype("", "cpu") == torch.bfloat16
    assert resolve_amp_dtype("bfloat16", "cuda") == torch.bfloat16
    assert resolve_amp_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_amp_dtype("float16", "cuda") == torch.float16
    assert resolve_amp_dtype(torch.bfloat16, "cpu") == torch.bfloat16


def test_errors_name_the_key():
    with pytest.raises(ValueError, match="TEST.AMP.DTYPE='float16' on CPU"):
        resolve_amp_dtype("float16", "cpu", "TEST.AMP.DTYPE")
    with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE='half'"):
        resolve_amp_dtype("half", "cuda")
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        resolve_amp_dtype(torch.float32, "cpu")
    with pytest.raises(ValueError, match="device type 'mps'"):
        resolve_amp_dtype("", "mps")


def test_autocast_context():
    with autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        out = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
        assert out.dtype == torch.bfloat16
    with autocast("cpu", torch.bfloat16, enabled=False):
        assert not torch.is_autocast_enabled("cpu")
