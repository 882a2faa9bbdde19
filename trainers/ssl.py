"""The unsupervised half of joint training: masked-image reconstruction on unlabelled images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unimed.networks.layers import Conv, upsample_to
from unimed.networks.unimed import UniMed

__all__ = ["MaskedReconstruction"]


class MaskedReconstruction(nn.Module):
    """Hide random blocks of the input and reconstruct them from the per-pixel embeddings.

    The target is the channel mean of the normalised image, so one head serves any number of
    channels. The loss is the mean squared error over hidden voxels only.

    Args:
        mask_dim: width of the network's per-pixel embedding.
        block: side of a hidden block in grid voxels (a 2D image's depth stays whole).
        ratio: share of blocks hidden.

    Example:
        >>> from unimed.networks.unimed import unimed_tiny
        >>> net = unimed_tiny()
        >>> ssl = MaskedReconstruction(net.config.mask_dim, block=8)
        >>> bool(ssl(net, torch.randn(2, 1, 16, 16, 16)) > 0)
        True
    """

    def __init__(self, mask_dim: int, block: int = 16, ratio: float = 0.5):
        super().__init__()
        if not 0 < ratio < 1:
            raise ValueError(f"ratio must be in (0, 1), got {ratio}")
        self.block, self.ratio = block, ratio
        self.head = nn.Sequential(Conv(mask_dim, mask_dim, kernel_size=3), nn.GELU(), Conv(mask_dim, 1, kernel_size=1))

    def block_mask(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, 1, X, Y, Z)`` float mask, 1 where hidden."""
        b, _, *spatial = shape
        cells = [max(1, n // self.block) if n > 1 else 1 for n in spatial]
        coarse = (torch.rand(b, 1, *cells, generator=generator) < self.ratio).float()
        return F.interpolate(coarse, size=tuple(spatial), mode="nearest")

    def forward(self, model: UniMed, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mask = self.block_mask(tuple(images.shape), generator).to(images.device)
        feats = model.encode(images * (1 - mask))
        recon = upsample_to(self.head(feats.pixel), tuple(images.shape[2:]))
        target = images.mean(1, keepdim=True)
        return ((recon - target) ** 2 * mask).sum() / mask.sum().clamp(min=1)
