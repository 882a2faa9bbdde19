"""The UniMed backbone: a small residual encoder for 3D volumes and 2D images alike."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from unimed.networks.layers import Conv, ConvNormAct, ResBlock

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """A four-stage residual encoder with a stem that takes any number of input channels.

    The stem embeds every input channel with the same kernel and pools the channel axis
    (mean and max), so one set of weights serves a 1-channel CT, a 2-channel MR study and
    an RGB micrograph. Stages run at strides 2, 4, 8 and 16.

    Args:
        channels: feature channels of the four stages.
        blocks: residual blocks per stage.
        stem_channels: channels of the per-input-channel embedding.

    Example:
        >>> net = Backbone(channels=(8, 16, 32, 64), blocks=(1, 1, 1, 1), stem_channels=8)
        >>> [f.shape[1:] for f in net(torch.zeros(1, 2, 32, 32, 16))][-1]
        torch.Size([64, 2, 2, 1])
    """

    def __init__(
        self, *, channels: Sequence[int] = (16, 32, 64, 128), blocks: Sequence[int] = (1, 1, 2, 2), stem_channels: int = 16
    ):
        super().__init__()
        if len(channels) != 4 or len(blocks) != 4:
            raise ValueError(f"channels and blocks must have 4 entries, got {channels} and {blocks}")
        self.channels = tuple(channels)
        self.stem = Conv(1, stem_channels, kernel_size=3, stride=2)
        self.fuse = ConvNormAct(2 * stem_channels, channels[0], kernel_size=1)
        stages = []
        for i, (c, n) in enumerate(zip(channels, blocks)):
            layers: list[nn.Module] = [] if i == 0 else [ConvNormAct(channels[i - 1], c, kernel_size=3, stride=2)]
            layers += [ResBlock(c) for _ in range(n)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode ``x`` of shape ``(B, C, X, Y, Z)`` into features at strides 2, 4, 8, 16."""
        if x.ndim != 5:
            raise ValueError(f"expected (B, C, X, Y, Z), got shape {tuple(x.shape)}")
        b, c = x.shape[:2]
        per_channel = self.stem(x.reshape(b * c, 1, *x.shape[2:]))
        per_channel = per_channel.reshape(b, c, *per_channel.shape[1:])
        h = self.fuse(torch.cat([per_channel.mean(1), per_channel.amax(1)], dim=1))
        feats = []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats
