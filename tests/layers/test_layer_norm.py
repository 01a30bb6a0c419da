import pytest
import torch
import torch.nn.functional as F

from det3d.layers import DropPath, LayerNorm, drop_path, get_norm


@pytest.mark.parametrize("ndim", [2, 3])
def test_layer_norm_matches_torch_layer_norm_over_channels(ndim):
    torch.manual_seed(0)
    x = torch.randn(2, 6, *([5] * ndim))
    ln = LayerNorm(6)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(6))
        ln.bias.copy_(torch.randn(6))
    reference = F.layer_norm(x.movedim(1, -1), (6,), ln.weight, ln.bias, eps=1e-6).movedim(-1, 1)
    torch.testing.assert_close(ln(x), reference, rtol=1e-5, atol=1e-5)
    assert isinstance(get_norm("LN", 6, ndim), LayerNorm)
    with pytest.raises(ValueError, match="C=6"):
        ln(torch.randn(2, 5, 4, 4))


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 2)
    y = drop_path(x, 0.25, training=True)
    per_sample = y.flatten(1)
    # every sample is either all zero or all 1 / 0.75
    kept = torch.isclose(per_sample, torch.tensor(4 / 3)).all(1)
    assert torch.all((per_sample == 0).all(1) | kept)
    assert abs(float(y.mean()) - 1.0) < 0.05
    assert drop_path(x, 0.25, training=False) is x
    module = DropPath(0.5).eval()
    assert module(x) is x
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)
