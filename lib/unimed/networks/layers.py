"""Building blocks that serve 3D volumes and 2D images (depth 1) with one set of weights.

Tensors are always 5D, ``(B, C, X, Y, Z)`` in MONAI's spatial order; a 2D image has ``Z == 1``.
A :class:`Conv` keeps a 3D kernel; on a depth-1 input it runs the kernel's centre slice as a 2D
convolution, which is what the 3D kernel computes there with zero padding, at a third of the cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SIZE_DIVISOR", "Conv", "ConvNormAct", "ResBlock", "upsample_to", "position_encoding"]

#: input spatial sizes of the network must be multiples of this, its deepest stride (or 1, for the
#: depth of a 2D image)
SIZE_DIVISOR = 16


class Conv(nn.Conv3d):
    """A 3D convolution that runs as 2D on depth-1 inputs.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: cubic kernel size (odd, or equal to ``stride`` for patchifying).
        stride: cubic stride. Along a depth of 1 the stride is 1.
        bias: add a bias.

    Example:
        >>> conv = Conv(2, 8, kernel_size=3, stride=2)
        >>> conv(torch.zeros(1, 2, 16, 16, 1)).shape
        torch.Size([1, 8, 8, 8, 1])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, bias: bool = True):
        if kernel_size % 2 == 0 and kernel_size != stride:
            raise ValueError(f"an even kernel_size must equal stride, got kernel_size={kernel_size}, stride={stride}")
        padding = kernel_size // 2 if kernel_size % 2 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolve(x, self.weight, self.bias)

    def grouped_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``self(x)`` computed :data:`OUTPUT_GROUP` output channels at a time, each group with
        the same shape whatever the layer's width (see :func:`output_groups`)."""
        return torch.cat([self.convolve(x, w, b) for w, b in output_groups(self.weight, self.bias)], 1)[
            :, : self.out_channels]

    def convolve(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """This layer's convolution of ``x`` with another ``weight`` and ``bias`` (of its kernel size)."""
        if x.ndim != 5:
            raise ValueError(f"expected a 5D tensor (B, C, X, Y, Z), got shape {tuple(x.shape)}")
        if x.shape[-1] > 1:
            if self.kernel_size[0] % 2 == 0 and x.shape[-1] % self.stride[0]:
                raise ValueError(f"depth {x.shape[-1]} is not divisible by the patch stride {self.stride[0]}")
            return self._conv_forward(x, weight, bias)
        k = self.kernel_size[0]
        weight = weight[..., k // 2] if k % 2 else weight.sum(-1)
        y = F.conv2d(x[..., 0], weight, bias, stride=self.stride[:2], padding=self.padding[:2])
        return y.unsqueeze(-1)


#: output rows per kernel call of the layers sized by the label space
OUTPUT_GROUP = 8


def output_groups(weight: torch.Tensor, bias: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A layer's output rows in groups of :data:`OUTPUT_GROUP`, the last padded with zero rows.

    A matrix product or convolution may sum in another order when its number of outputs
    changes; computed in groups of one fixed size, the old outputs of a head that grows by a
    row (a new label, :mod:`unimed.label_growth`) stay bit-identical.

    Example:
        >>> [tuple(w.shape) for w, _ in output_groups(torch.zeros(11, 4), torch.zeros(11))]
        [(8, 4), (8, 4)]
    """
    pad = -weight.shape[0] % OUTPUT_GROUP
    if pad:
        weight = torch.cat([weight, weight.new_zeros(pad, *weight.shape[1:])])
        bias = torch.cat([bias, bias.new_zeros(pad)])
    return [(weight[i: i + OUTPUT_GROUP], bias[i: i + OUTPUT_GROUP]) for i in range(0, weight.shape[0], OUTPUT_GROUP)]


def grouped_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)`` computed in groups of :data:`OUTPUT_GROUP` outputs (see :func:`output_groups`).

    Example:
        >>> lin = nn.Linear(4, 11)
        >>> x = torch.randn(2, 4)
        >>> torch.allclose(grouped_linear(x, lin), lin(x))
        True
    """
    return torch.cat([F.linear(x, w, b) for w, b in output_groups(layer.weight, layer.bias)], -1)[
        ..., : layer.out_features]


class ConvNormAct(nn.Sequential):
    """``Conv -> GroupNorm -> GELU``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(
            Conv(in_channels, out_channels, kernel_size, stride, bias=False),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.GELU(),
        )


class ResBlock(nn.Module):
    """A residual block of two 3x3x3 convolutions with GroupNorm."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels)
        self.conv2 = Conv(channels, channels, bias=False)
        self.norm2 = nn.GroupNorm(_groups(channels), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x + self.norm2(self.conv2(self.conv1(x))))


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


def upsample_to(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Resize a 5D tensor to spatial ``size`` (trilinear; bilinear when both depths are 1)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if x.shape[-1] == 1 and size[-1] == 1:
        return F.interpolate(x[..., 0], size=size[:2], mode="bilinear", align_corners=False).unsqueeze(-1)
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


def position_encoding(
    shape: tuple[int, int, int], dim: int, origin=(0.0, 0.0, 0.0), extent=(1.0, 1.0, 1.0), device=None
) -> torch.Tensor:
    """Sinusoidal encoding of each cell centre of a ``shape`` grid, as ``(prod(shape), dim)``.

    Coordinates are normalised to the whole image (``origin`` and ``extent`` place a window
    inside it), so features stitched from sliding windows keep one frame of reference.
    """
    if dim % 6:
        raise ValueError(f"dim must be a multiple of 6 (sin and cos for 3 axes), got {dim}")
    axes = []
    for n, o, e in zip(shape, origin, extent):
        axes.append(o + e * (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n)
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    nfreq = dim // 6
    freqs = (2.0 ** torch.arange(nfreq, device=device, dtype=torch.float32)) * math.pi
    angles = grid[:, :, None] * freqs  # (N, 3, nfreq)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(grid.shape[0], dim)
