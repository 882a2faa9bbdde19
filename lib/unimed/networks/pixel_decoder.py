"""The pixel decoder: a feature pyramid that turns backbone features into per-pixel embeddings."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from unimed.networks.layers import Conv, ConvNormAct, upsample_to

__all__ = ["PixelDecoder"]


class PixelDecoder(nn.Module):
    """Top-down feature pyramid over the four backbone stages.

    Args:
        in_channels: channels of the backbone stages (strides 2, 4, 8, 16).
        dim: channels of the pyramid and of the decoder's memory.
        mask_dim: channels of the per-pixel embedding that mask embeddings are dotted with.

    Returns from ``forward``: ``(pixel_embedding, memory, dense)`` where ``pixel_embedding`` is
    ``(B, mask_dim, X/2, Y/2, Z/2)``, ``memory`` is the list of pyramid levels at strides
    16 and 8, ``(B, dim, ...)`` each, that the transformer decoder attends to, and ``dense``
    the stride-4 level ``(B, dim, X/4, Y/4, Z/4)`` that proposes objects.

    Example:
        >>> dec = PixelDecoder(in_channels=(8, 16, 32, 64), dim=24, mask_dim=16)
        >>> feats = [torch.zeros(1, c, 16 // 2**i, 16 // 2**i, 1) for i, c in enumerate((8, 16, 32, 64))]
        >>> pix, mem, dense = dec(feats)
        >>> pix.shape, [m.shape[2:] for m in mem]
        (torch.Size([1, 16, 16, 16, 1]), [torch.Size([2, 2, 1]), torch.Size([4, 4, 1])])
    """

    def __init__(self, *, in_channels: Sequence[int], dim: int = 96, mask_dim: int = 32):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must have 4 entries (strides 2, 4, 8, 16), got {in_channels}")
        self.lateral = nn.ModuleList(Conv(c, dim, kernel_size=1) for c in in_channels)
        self.smooth = nn.ModuleList(ConvNormAct(dim, dim) for _ in range(2))  # strides 8 and 4
        self.mask_proj = nn.Sequential(ConvNormAct(dim, dim, kernel_size=1), Conv(dim, mask_dim, kernel_size=1))

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        f2, f4, f8, f16 = feats
        p16 = self.lateral[3](f16)
        p8 = self.smooth[0](self.lateral[2](f8) + upsample_to(p16, f8.shape[2:]))
        p4 = self.smooth[1](self.lateral[1](f4) + upsample_to(p8, f4.shape[2:]))
        p2 = self.lateral[0](f2) + upsample_to(p4, f2.shape[2:])
        return self.mask_proj(p2), [p16, p8], p4
