"""A 3D convolution that runs oneDNN on the CPU at every batch size.

For a float32 CPU input PyTorch takes its oneDNN kernel only when the batch is larger than
one or ``N·C·D·H`` exceeds 20480, a rule tuned for 2D images; below it, which is every layer
of a 32³ ROI decoded on its own, it runs ``slow_conv3d``, an im2col loop. The generators
decode and sample one ROI at a time (so that a ROI does not depend on the batch it came
in), so that loop made the demo's 32³ decoding 6.5× slower on a 2-core CPU
(``docs/generator.md``, "Sampling speed"). oneDNN is the kernel PyTorch itself uses for
every larger batch; its gradients are PyTorch's own.
"""

from __future__ import annotations

import torch
from torch import nn


class Conv3d(nn.Conv3d):
    """`nn.Conv3d` (same arguments, parameters and state dict) that takes oneDNN for float32
    CPU inputs of any batch size; other devices, dtypes, padding modes and CPU autocast (which
    casts to bf16, a dtype PyTorch already runs on oneDNN) take its own path."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if (
            input.device.type == "cpu"
            and input.dtype == torch.float32
            and weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and torch.backends.mkldnn.is_available()
            and not torch.is_autocast_enabled("cpu")
        ):
            return torch.mkldnn_convolution(
                input, weight, bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super()._conv_forward(input, weight, bias)


def use_onednn_convs(module: nn.Module) -> nn.Module:
    """Turn every plain `nn.Conv3d` inside ``module`` (a MONAI network, say) into a `Conv3d`,
    in place; returns ``module``. Parameters and state dict are unchanged."""
    for child in module.modules():
        if type(child) is nn.Conv3d:
            child.__class__ = Conv3d
    return module
