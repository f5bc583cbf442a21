"""`tumoraug.models.conv`: oneDNN 3D convolutions on the CPU at batch size 1."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tumoraug.models.conv import Conv3d, use_onednn_convs


def _pair(**kwargs: object) -> tuple[nn.Conv3d, Conv3d]:
    torch.manual_seed(0)
    plain = nn.Conv3d(8, 16, 3, **kwargs)
    fast = Conv3d(8, 16, 3, **kwargs)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


@pytest.mark.parametrize("kwargs", [{"padding": 1}, {"stride": 2, "padding": 1}, {"bias": False}])
def test_same_values_and_gradients_as_nn_conv3d(kwargs: dict) -> None:
    plain, fast = _pair(**kwargs)
    x = torch.randn(1, 8, 8, 8, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = plain(x), fast(x2)
    torch.testing.assert_close(y2, y, rtol=1e-4, atol=1e-5)
    y.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-3)


def test_takes_onednn_where_pytorch_would_take_slow_conv3d() -> None:
    fast = _pair(padding=1)[1]
    x = torch.randn(1, 8, 8, 8, 8)  # N*C*D*H = 512 < 20480: PyTorch's rule picks slow_conv3d
    with torch.no_grad(), torch.profiler.profile() as prof:
        fast(x)
    names = {event.key for event in prof.key_averages()}
    assert "aten::mkldnn_convolution" in names
    assert "aten::slow_conv3d_forward" not in names
    assert torch.equal(fast(x), fast(x))  # deterministic


def test_other_dtypes_and_padding_modes_take_the_plain_path() -> None:
    plain, fast = _pair(padding=1, padding_mode="replicate")
    x = torch.randn(1, 8, 6, 6, 6)
    torch.testing.assert_close(fast(x), plain(x))
    plain, fast = _pair(padding=1)
    torch.testing.assert_close(fast.double()(x.double()), plain.double()(x.double()))


def test_use_onednn_convs_converts_plain_convs_in_place() -> None:
    net = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.Sequential(nn.Conv3d(2, 2, 1)))
    keys = net.state_dict().keys()
    assert use_onednn_convs(net) is net
    assert [type(m) for m in net.modules() if isinstance(m, nn.Conv3d)] == [Conv3d, Conv3d]
    assert net.state_dict().keys() == keys


def test_cpu_autocast_still_runs_the_conv_in_bf16() -> None:
    fast = _pair(padding=1)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(torch.randn(1, 8, 6, 6, 6)).dtype == torch.bfloat16
