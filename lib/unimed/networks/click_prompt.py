"""Clicks and boxes in the composed decoder: prompt tokens for the queue, and a local refiner.

A click is a prompt token: its position quantised into the coordinate vocabulary (one
coordinate token per axis), its kind (foreground, background, box corner) and the pixel
embedding under it. The tokens join the decoder's queue after the task and label tokens, so
the label token (or, with no label, the first foreground click's own pixel output: the clicked
object) is conditioned on them. Attention alone moves a mask everywhere at once, so a small
convolutional refiner then corrects the object's logits near the clicks, from their distance
maps, the pixel embeddings' similarity to the clicked ones and, for objects no label describes,
how much each voxel looks like the clicked ones in the image itself (:func:`appearance_map`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unimed.clicks import BACKGROUND, BOX_HIGH, BOX_LOW, FOREGROUND
from unimed.networks.layers import position_encoding

__all__ = ["ClickEncoder", "ClickRefiner", "appearance_map", "point_features", "object_index", "APPEARANCE_WIDTH"]

#: kinds of points, padding included (:mod:`unimed.clicks`)
NUM_KINDS = 5

#: width, in standard deviations of the image's intensities, of the appearance similarity
APPEARANCE_WIDTH = 0.5


def appearance_map(image: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The image averaged onto a grid of ``shape`` (the pixel grid), each channel standardised
    over the image: ``(B, C, *shape)``.

    Example:
        >>> a = appearance_map(torch.rand(1, 2, 32, 32, 16), (16, 16, 8))
        >>> tuple(a.shape), abs(float(a[0, 0].mean())) < 1e-4, round(float(a[0, 0].std()), 2)
        ((1, 2, 16, 16, 8), True, 1.0)
    """
    x = F.adaptive_avg_pool3d(image.float(), shape)
    mean = x.mean(dim=(2, 3, 4), keepdim=True)
    std = x.std(dim=(2, 3, 4), keepdim=True).clamp(min=1e-6)
    return ((x - mean) / std).to(image.dtype)


def point_features(pixel: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Pixel embeddings ``(B, N, D)`` at normalised ``points`` ``(B, N, 3)`` (trilinear)."""
    grid = (points * 2 - 1).flip(-1)  # grid_sample wants (z, y, x) order in [-1, 1]
    if pixel.shape[-1] == 1:  # 2D: sample the one slice
        grid = grid.clone()
        grid[..., 0] = 0.0
    out = F.grid_sample(pixel.float(), grid[:, :, None, None, :].float(), mode="bilinear", align_corners=False)
    return out[:, :, :, 0, 0].transpose(1, 2).to(pixel.dtype)


def object_index(prompt_pad: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """``(B,)`` index, in the queue ``[prompt..., points...]``, of each row's object: its label token
    (position 1) when the prompt names one, else its first foreground click or box corner.

    Raises:
        ValueError: a row with neither a label nor a foreground click or box.

    Example:
        >>> object_index(torch.tensor([[False, False], [False, True]]), torch.tensor([[1, 2], [2, 1]])).tolist()
        [1, 3]
    """
    p = prompt_pad.shape[1]
    has_label = (~prompt_pad[:, 1]) if p > 1 else torch.zeros_like(prompt_pad[:, 0])
    positive = (kinds == FOREGROUND) | (kinds == BOX_LOW)
    if bool((~has_label & ~positive.any(1)).any()):
        raise ValueError("a prompt without a label needs a foreground click or a box to say which object it means")
    first = positive.float().argmax(1)
    return torch.where(has_label, torch.ones_like(first), p + first)


class ClickEncoder(nn.Module):
    """Prompt tokens of clicks and box corners.

    Args:
        dim: width of the decoder queue.
        mask_dim: width of the per-pixel embeddings sampled under each point.

    Example:
        >>> enc = ClickEncoder(dim=12, mask_dim=4)
        >>> coord = torch.zeros(2, 3, 3, 12)  # coordinate-token embeddings of each point's bins, per axis
        >>> tokens, pos = enc(torch.rand(2, 3, 3), torch.ones(2, 3, dtype=torch.long), coord, torch.zeros(2, 3, 4))
        >>> tokens.shape, pos.shape
        (torch.Size([2, 3, 12]), torch.Size([2, 3, 12]))
    """

    def __init__(self, *, dim: int, mask_dim: int):
        super().__init__()
        self.dim = dim
        self.kind_embed = nn.Embedding(NUM_KINDS, dim)
        self.axis_embed = nn.Parameter(torch.zeros(3, dim))
        self.coord_proj = nn.Linear(dim, dim)
        self.feature_proj = nn.Sequential(nn.LayerNorm(mask_dim), nn.Linear(mask_dim, dim))

    def forward(self, points: torch.Tensor, kinds: torch.Tensor, coord_embed: torch.Tensor,
                features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and position encodings ``(B, N, dim)``.

        Args:
            points: ``(B, N, 3)`` normalised positions (already quantised to bin centres).
            kinds: ``(B, N)`` point kinds.
            coord_embed: ``(B, N, 3, dim)`` embeddings of each point's coordinate token per axis.
            features: ``(B, N, mask_dim)`` pixel embeddings under the points.
        """
        coords = self.coord_proj((coord_embed + self.axis_embed).sum(2))
        tokens = self.kind_embed(kinds) + coords + self.feature_proj(features)
        b, n = points.shape[:2]
        nfreq = self.dim // 6
        freqs = (2.0 ** torch.arange(nfreq, device=points.device, dtype=torch.float32)) * torch.pi
        angles = points.float()[..., None] * freqs  # (B, N, 3, nfreq): the memory's own encoding
        pos = torch.cat([angles.sin(), angles.cos()], -1).reshape(b, n, -1).to(tokens.dtype)
        return tokens, pos


class ClickRefiner(nn.Module):
    """Corrects the object's logits near the clicks.

    Per voxel of the pixel grid it reads: the object's logit against the background, the
    distance maps of the nearest foreground and background clicks (Gaussians of two widths),
    the cosine similarity of the pixel embedding to the nearest-looking foreground and
    background click, whether the voxel lies inside the box and, with ``appearance``, how
    close the voxel's intensities are to the nearest-looking foreground and background click's
    (a Gaussian of :data:`APPEARANCE_WIDTH` standard deviations). The embeddings know the
    structures training labelled; the intensities also describe one it never saw. Two 3x3x3
    convolutions and a zero-initialised 1x1 convolution give the correction, so an untrained
    refiner changes nothing.

    Args:
        hidden: channels of the convolutions.
        sigmas: widths of the distance Gaussians, in pixel-grid voxels.
        appearance: also read the image's appearance (two more input channels, after the others).

    Example:
        >>> ref = ClickRefiner()
        >>> logit = torch.zeros(1, 8, 8, 4)
        >>> out = ref(logit, torch.zeros(1, 4, 8, 8, 4), torch.rand(1, 2, 3), torch.tensor([[1, 2]]),
        ...           torch.rand(1, 2, 4))
        >>> bool(torch.equal(out, logit))  # untrained: no correction
        True
    """

    #: input channels without appearance: the logit and the seven guidance maps
    IN_CHANNELS = 8
    #: input channels appearance adds
    APPEARANCE_CHANNELS = 2

    def __init__(self, *, hidden: int = 16, sigmas: tuple[float, float] = (2.0, 8.0), appearance: bool = False):
        super().__init__()
        self.sigmas = sigmas
        self.appearance = appearance
        channels = self.IN_CHANNELS + (self.APPEARANCE_CHANNELS if appearance else 0)
        self.net = nn.Sequential(
            nn.Conv3d(channels, hidden, 3, padding=1), nn.GELU(),
            nn.Conv3d(hidden, hidden, 3, padding=1), nn.GELU(),
            nn.Conv3d(hidden, 1, 1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def guidance(self, pixel: torch.Tensor, points: torch.Tensor, kinds: torch.Tensor,
                 features: torch.Tensor, appearance: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 7, X, Y, Z)`` (9 with ``appearance``, :func:`appearance_map` on the pixel grid):
        the refiner's inputs but the object's logit."""
        b, _, *shape = pixel.shape
        axes = [(torch.arange(n, device=pixel.device, dtype=torch.float32) + 0.5) for n in shape]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), 0)  # (3, X, Y, Z) voxel centres
        size = torch.tensor(shape, device=pixel.device, dtype=torch.float32)
        pts = points.float() * size  # (B, N, 3) in voxels
        d2 = ((grid[None, None] - pts[..., None, None, None]) ** 2).sum(2)  # (B, N, X, Y, Z)
        unit = F.normalize(pixel.float(), dim=1)
        sim = torch.einsum("bnd,bdxyz->bnxyz", F.normalize(features.float(), dim=-1), unit)
        maps = []
        for kind in (FOREGROUND, BACKGROUND):
            sel = (kinds == kind)[..., None, None, None]
            nearest = d2.masked_fill(~sel, float("inf")).amin(1)
            maps += [torch.exp(-nearest / (2 * s * s)) for s in self.sigmas]
            maps.append(sim.masked_fill(~sel, -1.0).amax(1).clamp(min=0.0))
        inside = torch.zeros(b, *shape, device=pixel.device)
        has_box = (kinds == BOX_LOW).any(1)
        if bool(has_box.any()):
            lo = (points * (kinds == BOX_LOW)[..., None]).sum(1) * size
            hi = (points * (kinds == BOX_HIGH)[..., None]).sum(1) * size
            within = ((grid[None] >= lo[..., None, None, None] - 0.5) & (grid[None] <= hi[..., None, None, None] + 0.5))
            inside = within.all(1).float() * has_box[:, None, None, None].float()
        maps.append(inside)
        if appearance is not None:
            looks = point_features(appearance, points).float()  # (B, N, C) intensities under the points
            diff = (appearance.float()[:, None] - looks[..., None, None, None]).pow(2).mean(2)  # (B, N, X, Y, Z)
            like = torch.exp(-diff / (2 * APPEARANCE_WIDTH ** 2))
            for kind in (FOREGROUND, BACKGROUND):
                sel = (kinds == kind)[..., None, None, None]
                maps.append(like.masked_fill(~sel, 0.0).amax(1))
        return torch.stack(maps, 1).to(pixel.dtype)

    def forward(self, logit: torch.Tensor, pixel: torch.Tensor, points: torch.Tensor, kinds: torch.Tensor,
                features: torch.Tensor, appearance: torch.Tensor | None = None) -> torch.Tensor:
        """The object's corrected logit ``(B, X, Y, Z)``.

        Args:
            logit: ``(B, X, Y, Z)`` the object's logit against the background.
            pixel: ``(B, mask_dim, X, Y, Z)`` per-pixel embeddings.
            points, kinds: the prompt's points (:func:`unimed.clicks.click_tensors`).
            features: ``(B, N, mask_dim)`` pixel embeddings under the points.
            appearance: ``(B, C, X, Y, Z)`` the image on the pixel grid (:func:`appearance_map`);
                required when the refiner reads appearance, ignored otherwise.

        Raises:
            ValueError: a refiner that reads appearance is given none.
        """
        if self.appearance and appearance is None:
            raise ValueError("this click refiner reads the image's appearance: pass appearance_map() of the image")
        guide = self.guidance(pixel, points, kinds, features, appearance if self.appearance else None)
        x = torch.cat([logit[:, None].clamp(-10.0, 10.0) / 5, guide], 1)
        return logit + self.net(x)[:, 0]
