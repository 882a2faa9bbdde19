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
    an RGB micrograph. With ``num_modalities``, each channel's embedding is first scaled and
    shifted by a learned vector of its modality (FLAIR, T1c, CT, ...), so the pooled features
    know which channel showed what, and any subset of channels still fits. Stages run at
    strides 2, 4, 8 and 16.

    Args:
        channels: feature channels of the four stages.
        blocks: residual blocks per stage.
        stem_channels: channels of the per-input-channel embedding.
        num_modalities: size of the modality vocabulary (index 0: unknown); 0 for a stem that
            cannot tell channels apart (checkpoints of version 1).

    Example:
        >>> net = Backbone(channels=(8, 16, 32, 64), blocks=(1, 1, 1, 1), stem_channels=8)
        >>> [f.shape[1:] for f in net(torch.zeros(1, 2, 32, 32, 16))][-1]
        torch.Size([64, 2, 2, 1])
    """

    def __init__(
        self,
        *,
        channels: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 2, 2),
        stem_channels: int = 16,
        num_modalities: int = 0,
    ):
        super().__init__()
        if len(channels) != 4 or len(blocks) != 4:
            raise ValueError(f"channels and blocks must have 4 entries, got {channels} and {blocks}")
        self.channels = tuple(channels)
        self.stem = Conv(1, stem_channels, kernel_size=3, stride=2)
        self.fuse = ConvNormAct(2 * stem_channels, channels[0], kernel_size=1)
        self.num_modalities = num_modalities
        if num_modalities:
            # (1 + scale) * h + shift per modality; zero at start, so every modality starts alike
            self.modality_film = nn.Embedding(num_modalities, 2 * stem_channels)
            nn.init.zeros_(self.modality_film.weight)
        stages = []
        for i, (c, n) in enumerate(zip(channels, blocks)):
            layers: list[nn.Module] = [] if i == 0 else [ConvNormAct(channels[i - 1], c, kernel_size=3, stride=2)]
            layers += [ResBlock(c) for _ in range(n)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor, modalities: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Encode ``x`` of shape ``(B, C, X, Y, Z)`` into features at strides 2, 4, 8, 16.

        ``modalities`` ``(B, C)`` holds each channel's modality index (None: all unknown); a
        stem without modality embeddings ignores it.
        """
        if x.ndim != 5:
            raise ValueError(f"expected (B, C, X, Y, Z), got shape {tuple(x.shape)}")
        b, c = x.shape[:2]
        per_channel = self.stem(x.reshape(b * c, 1, *x.shape[2:]))
        per_channel = per_channel.reshape(b, c, *per_channel.shape[1:])
        if self.num_modalities:
            if modalities is None:
                modalities = torch.zeros(b, c, dtype=torch.long, device=x.device)
            if tuple(modalities.shape) != (b, c):
                raise ValueError(f"modalities must be (B, C) = {(b, c)}, got {tuple(modalities.shape)}")
            if int(modalities.min()) < 0 or int(modalities.max()) >= self.num_modalities:
                raise ValueError(f"modality indices must be in [0, {self.num_modalities}), got {modalities.tolist()}")
            scale, shift = self.modality_film(modalities.to(x.device)).chunk(2, dim=-1)  # (B, C, S) each
            expand = (b, c, -1) + (1,) * (per_channel.ndim - 3)
            per_channel = per_channel * (1 + scale.reshape(expand).to(per_channel.dtype)) + shift.reshape(expand).to(
                per_channel.dtype)
        h = self.fuse(torch.cat([per_channel.mean(1), per_channel.amax(1)], dim=1))
        feats = []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats
