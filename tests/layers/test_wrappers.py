import pytest
import torch
import torch.nn.functional as F
from torch import nn

from det3d.layers.batch_norm import FrozenBatchNorm, get_norm
from det3d.layers.shape_spec import ShapeSpec, as_tuple
from det3d.layers.wrappers import (
    Conv,
    Conv3d,
    cat,
    conv_nd,
    conv_norm_relu_stack,
    conv_transpose_nd,
    max_pool_nd,
    nonzero_tuple,
)


@pytest.mark.parametrize("ndim", [2, 3])
def test_conv_nd_classes_and_shapes(ndim):
    assert conv_nd(ndim) is {2: nn.Conv2d, 3: Conv3d}[ndim]
    assert issubclass(conv_nd(ndim), {2: nn.Conv2d, 3: nn.Conv3d}[ndim])
    assert conv_transpose_nd(ndim) is {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[ndim]
    assert max_pool_nd(ndim) is {2: nn.MaxPool2d, 3: nn.MaxPool3d}[ndim]
    torch.manual_seed(0)
    x = torch.randn(2, 3, *([8] * ndim))
    conv = Conv(ndim, 3, 5, kernel_size=3, stride=2, padding=1)
    assert conv(x).shape == (2, 5, *([4] * ndim))
    up = conv_transpose_nd(ndim)(5, 4, kernel_size=2, stride=2)
    assert up(conv(x)).shape == (2, 4, *([8] * ndim))
    # per-axis stride: anisotropic downsampling keeps the first axis
    aniso = Conv(ndim, 3, 2, kernel_size=1, stride=(1,) + (2,) * (ndim - 1))
    assert aniso(x).shape == (2, 2, 8, *([4] * (ndim - 1)))
    with pytest.raises(ValueError, match="ndim"):
        conv_nd(4)


@pytest.mark.parametrize(
    "shape, kernel, padding",
    [
        ((2, 8, 2, 4, 4), 3, 1),  # kernel deeper than the input: oneDNN's bf16 weight grad fails
        ((1, 8, 3, 3, 3), 5, 2),
        ((2, 8, 4, 4, 4), 3, 1),  # the usual case, left to autocast
    ],
)
def test_conv3d_weight_gradient_under_cpu_bfloat16_autocast_matches_float32(shape, kernel, padding):
    torch.manual_seed(0)
    conv = conv_nd(3)(shape[1], 8, kernel, padding=padding)
    ref = nn.Conv3d(shape[1], 8, kernel, padding=padding)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    grad_out = torch.randn(y.shape)
    (y.float() * grad_out).sum().backward()
    (ref(x) * grad_out).sum().backward()
    # bfloat16 keeps 8 bits of mantissa: a few 1e-3 of the largest gradient
    scale = ref.weight.grad.abs().max()
    assert (conv.weight.grad - ref.weight.grad).abs().max() <= 2e-2 * scale
    assert (conv.bias.grad - ref.bias.grad).abs().max() <= 2e-2 * ref.bias.grad.abs().max()
    # float32 only where the kernel is deeper than the input; autocast's bfloat16 elsewhere
    deeper = shape[2] < kernel
    assert y.dtype == (torch.float32 if deeper else torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16  # inference: forward results are right in bf16


def test_conv_applies_conv_then_norm_then_activation():
    torch.manual_seed(0)
    norm = nn.GroupNorm(2, 4)
    conv = Conv(3, 2, 4, kernel_size=3, padding=1, bias=False, norm=norm, activation=F.relu)
    assert conv.norm is norm and conv.activation is F.relu
    assert conv.bias is None and conv.weight.shape == (4, 2, 3, 3, 3) and conv.out_channels == 4
    x = torch.randn(1, 2, 5, 6, 7)
    expected = F.relu(norm(F.conv3d(x, conv.weight, padding=1)))
    torch.testing.assert_close(conv(x), expected)
    with pytest.raises(ValueError, match="shape"):
        conv(torch.randn(1, 2, 5, 6))


@pytest.mark.parametrize("ndim,bias,norm", [(3, True, None), (3, False, "GN"), (2, True, None)])
def test_conv_forward_concat_equals_forward_of_the_concatenation(ndim, bias, norm):
    torch.manual_seed(0)
    conv = Conv(
        ndim,
        17,
        16,
        kernel_size=3,
        padding=1,
        bias=bias,
        norm=nn.GroupNorm(4, 16) if norm else None,
        activation=F.relu,
    )
    feats = torch.randn((3, 16) + (6,) * ndim, requires_grad=True)
    image = torch.randn((3, 1) + (6,) * ndim, requires_grad=True)
    ours = conv.forward_concat([feats, image])
    # the reference: the plain convolution of the concatenated input
    ref_conv = getattr(F, f"conv{ndim}d")
    ref = ref_conv(torch.cat([feats, image], 1), conv.weight, conv.bias, padding=1)
    ref = F.relu(conv.norm(ref) if norm else ref)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(ref.shape)
    got = torch.autograd.grad(ours, [feats, image, conv.weight], grad)
    want = torch.autograd.grad(ref, [feats, image, conv.weight], grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="add up to the conv's 17 input channels"):
        conv.forward_concat([feats])


def test_conv_forward_concat_keeps_the_float32_rule_under_cpu_bfloat16_autocast():
    # a kernel deeper than the input: Conv3d's float32 path must serve the parts too
    torch.manual_seed(0)
    conv = Conv(3, 9, 4, kernel_size=3, padding=1)
    parts = [torch.randn(2, 8, 2, 4, 4), torch.randn(2, 1, 2, 4, 4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv.forward_concat(parts)
    assert y.dtype == torch.float32
    y.sum().backward()
    ref = nn.Conv3d(9, 4, 3, padding=1)
    ref.load_state_dict(conv.conv.state_dict())
    ref(torch.cat(parts, 1)).sum().backward()
    scale = ref.weight.grad.abs().max()
    assert (conv.weight.grad - ref.weight.grad).abs().max() <= 2e-2 * scale


@pytest.mark.parametrize("norm", ["", "GN"])
def test_conv_norm_relu_stack_chains_channels_and_keeps_size(norm):
    convs = list(conv_norm_relu_stack(3, 4, [8, 16], norm))
    assert [(c.in_channels, c.out_channels) for c in convs] == [(4, 8), (8, 16)]
    assert all((c.bias is None) == bool(norm) and (c.norm is None) == (not norm) for c in convs)
    x = torch.randn(2, 4, 5, 6, 7)
    for c in convs:
        x = c(x)
    assert x.shape == (2, 16, 5, 6, 7) and (x >= 0).all()
    assert list(conv_norm_relu_stack(2, 4, [])) == []


def test_cat_and_nonzero_tuple():
    t = torch.arange(3)
    assert cat([t]) is t
    assert torch.equal(cat([t, t]), torch.cat([t, t]))
    x = torch.tensor([[0, 1], [2, 0]])
    rows, cols = nonzero_tuple(x)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    assert nonzero_tuple(torch.tensor(5))[0].tolist() == [0]


def test_shape_spec_and_as_tuple():
    s = ShapeSpec(channels=8, stride=as_tuple(4, 3))
    assert s.stride == (4, 4, 4) and s.channels == 8
    assert ShapeSpec().channels is None
    assert as_tuple([1, 2, 2], 3) == (1, 2, 2)
    with pytest.raises(ValueError, match=r"\[1, 2\]"):
        as_tuple([1, 2], 3)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_frozen_bn_equals_eval_mode_bn(ndim):
    torch.manual_seed(ndim)
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[ndim](6, eps=1e-3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.2, 3.0)
    bn.eval()
    frozen = FrozenBatchNorm.convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm) and frozen.eps == 1e-3
    x = torch.randn(2, 6, *([5] * ndim))
    torch.testing.assert_close(frozen(x), bn(x))
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()  # still frozen in train mode
    torch.testing.assert_close(frozen(x), bn(x))


def test_convert_frozen_recursive_and_state_dict():
    model = nn.Sequential(nn.Conv3d(1, 4, 1), nn.BatchNorm3d(4), nn.Sequential(nn.BatchNorm2d(4)))
    converted = FrozenBatchNorm.convert_frozen_batchnorm(model)
    assert converted is model
    assert isinstance(model[1], FrozenBatchNorm) and isinstance(model[2][0], FrozenBatchNorm)
    # A BatchNorm checkpoint (with num_batches_tracked) loads into FrozenBatchNorm.
    bn = nn.BatchNorm3d(4)
    bn.running_mean.fill_(0.5)
    fbn = FrozenBatchNorm(4)
    fbn.load_state_dict(bn.state_dict())
    assert torch.equal(fbn.running_mean, torch.full((4,), 0.5))


def test_frozen_bn_rejects_wrong_channels():
    with pytest.raises(ValueError, match="FrozenBatchNorm"):
        FrozenBatchNorm(3)(torch.zeros(1, 4, 2, 2))


def test_get_norm():
    assert get_norm("", 8, ndim=3) is None and get_norm(None, 8) is None
    assert isinstance(get_norm("BN", 8, ndim=3), nn.BatchNorm3d)
    assert isinstance(get_norm("BN", 8, ndim=2), nn.BatchNorm2d)
    assert isinstance(get_norm("SyncBN", 8, ndim=3), nn.SyncBatchNorm)
    assert isinstance(get_norm("FrozenBN", 8, ndim=3), FrozenBatchNorm)
    gn = get_norm("GN", 64, ndim=3)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32
    assert get_norm("GN", 24, ndim=3).num_groups == 24  # fewer than 32 channels
    assert get_norm("GN", 80, ndim=3).num_groups == 20  # 80 is not a multiple of 32
    custom = get_norm(lambda c: nn.LayerNorm(c), 8, ndim=3)
    assert isinstance(custom, nn.LayerNorm)
    assert type(get_norm("LN", 8, ndim=3)).__name__ == "LayerNorm"  # channels-first, det3d's
    with pytest.raises(ValueError, match="'IN'"):
        get_norm("IN", 8, ndim=3)


@pytest.mark.parametrize(
    "shape, kernel, stride, padding, dilation",
    [
        ((1, 16, 16, 16, 16), 3, 1, 1, 1),  # the usual 3x3x3, cut along the first axis
        ((1, 4, 9, 12, 5), 3, 2, 1, 1),  # strided; only the second axis' output is even
        ((1, 3, 17, 20, 9), (7, 3, 7), 2, (3, 1, 3), 1),  # strided, 7 deep
        ((1, 5, 10, 13, 11), 3, 1, 2, 2),  # dilated
        ((1, 6, 5, 12, 12), (1, 3, 3), 1, (0, 1, 1), 1),  # anisotropic kernel
        ((1, 6, 8, 9, 10), 2, 2, 0, 1),  # no padding
    ],
)
def test_conv3d_of_one_volume_in_two_halves_is_the_convolution(
    shape, kernel, stride, padding, dilation
):
    torch.manual_seed(0)
    conv = Conv3d(shape[1], 4, kernel, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(shape, requires_grad=True)
    assert conv._split_axis(x) is not None  # the case under test: torch would run it natively
    y = conv(x)
    # reference: the same convolution in float64 (never cut: the cut is for float32 only)
    w64 = conv.weight.detach().double().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    ref = F.conv3d(x64, w64, conv.bias.detach().double(), stride, padding, dilation)
    assert y.shape == ref.shape
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(ref.shape, dtype=torch.float64)
    (y.double() * grad_out).sum().backward()
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-3)


def test_conv3d_cuts_only_single_volumes_torch_would_run_natively():
    conv = Conv3d(8, 8, 3, padding=1)
    assert conv._split_axis(torch.zeros(1, 8, 8, 8, 8)) == 0
    assert conv._split_axis(torch.zeros(2, 8, 8, 8, 8)) is None  # a batch: oneDNN already
    assert conv._split_axis(torch.zeros(1, 8, 64, 64, 8)) is None  # 8 * 64 * 64 > 20480
    assert conv._split_axis(torch.zeros(1, 8, 8, 8, 8, dtype=torch.float64)) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv._split_axis(torch.zeros(1, 8, 8, 8, 8)) is None
    assert conv._split_axis(torch.zeros(1, 8, 1, 1, 1)) is None  # no output axis to halve
    assert conv._split_axis(torch.zeros(1, 8, 7, 9, 7)) is None  # no even output axis
    assert Conv3d(8, 8, 1)._split_axis(torch.zeros(1, 8, 8, 8, 8)) is None  # 1x1x1: native
    assert Conv3d(1, 8, 7, padding=3)._split_axis(torch.zeros(1, 1, 8, 8, 8)) is None  # oneDNN
    assert Conv3d(8, 8, 3, groups=2)._split_axis(torch.zeros(1, 8, 8, 8, 8)) is None  # oneDNN
    reflect = Conv3d(8, 8, 3, padding=1, padding_mode="reflect")
    assert reflect._split_axis(torch.zeros(1, 8, 8, 8, 8)) is None
