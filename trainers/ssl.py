"""The unsupervised half of joint training, on unlabelled images.

Two losses, chosen by ``TrainConfig.ssl_loss`` (DESIGN.md: "masked-image reconstruction or a
contrastive loss between two augmented views"):

* ``reconstruction`` (:class:`MaskedReconstruction`): hide blocks of the image and rebuild them
  from the per-pixel embeddings. It needs no label names, so it serves pretraining on any mix
  of datasets.
* ``consistency`` (:class:`PseudoLabelConsistency`): the network's own confident segmentation
  of one view teaches a harder view of the same image (pseudo-labels with a confidence
  threshold, as in FixMatch, Sohn et al. 2020). It asks for the labels being fine-tuned, so it
  serves fine-tuning on one kind of study: the datastore's, or al-sim's pool.
* ``mean_teacher``: the same consistency, but the teacher is an exponential moving average of
  the network's weights (Tarvainen & Valpola 2017), so its pseudo-labels lag the student's
  latest mistakes instead of repeating them.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unimed.networks.layers import Conv, upsample_to
from unimed.networks.unimednet import UniMed
from unimed.tasks import Task

__all__ = ["SSL_LOSSES", "MaskedReconstruction", "PseudoLabelConsistency", "block_mask", "check_ssl_loss", "make_ssl"]

#: the unsupervised losses joint training knows
SSL_LOSSES = ("reconstruction", "consistency", "mean_teacher")


def block_mask(shape: tuple[int, ...], block: int, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, 1, X, Y, Z)`` float mask of cubic blocks of side ``block``, 1 where hidden (a share
    ``ratio`` of the blocks); an axis of size 1 (a 2D image's depth) stays whole."""
    b, _, *spatial = shape
    cells = [max(1, n // block) if n > 1 else 1 for n in spatial]
    coarse = (torch.rand(b, 1, *cells, generator=generator) < ratio).float()
    return F.interpolate(coarse, size=tuple(spatial), mode="nearest")


class MaskedReconstruction(nn.Module):
    """Hide random blocks of the input and reconstruct them from the per-pixel embeddings.

    The target is the channel mean of the normalised image, so one head serves any number of
    channels. The loss is the mean squared error over hidden voxels only.

    Args:
        mask_dim: width of the network's per-pixel embedding.
        block: side of a hidden block in grid voxels (a 2D image's depth stays whole).
        ratio: share of blocks hidden.

    Example:
        >>> from unimed.networks.unimednet import unimed_tiny
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
        return block_mask(shape, self.block, self.ratio, generator)

    def forward(self, model: UniMed, images: torch.Tensor, generator: torch.Generator | None = None,
                modalities: torch.Tensor | None = None) -> torch.Tensor:
        mask = self.block_mask(tuple(images.shape), generator).to(images.device)
        feats = model.encode(images * (1 - mask), modalities)
        recon = upsample_to(self.head(feats.pixel), tuple(images.shape[2:]))
        target = images.mean(1, keepdim=True)
        return ((recon - target) ** 2 * mask).sum() / mask.sum().clamp(min=1)


class PseudoLabelConsistency(nn.Module):
    """The model's confident segmentation of an image teaches it on a harder view of the image.

    The teacher is the network itself (or, with ``teacher_decay``, an exponential moving average
    of its weights), without gradient, on the image as given (training has already flipped and
    jittered it). The student view is the same image mirrored along every
    spatial axis longer than one, with a share of blocks hidden and Gaussian noise added; its
    output is mirrored back and trained with cross-entropy towards the teacher's argmax over
    background and ``labels``, on the voxels where the teacher's top probability is at least
    ``threshold``. The sum is divided by all voxels, so while the model is unsure (early in a
    run, or on an unfamiliar image) the loss is small rather than loud. It has no trained
    weights: the averaged teacher is kept outside ``parameters()`` and ``state_dict()``, so the
    optimiser never sees it and a checkpoint never holds it; a fresh one starts from the
    network's weights.

    Args:
        labels: the label names prompted (the labels being fine-tuned).
        threshold: the teacher confidence a voxel needs to teach.
        block, ratio: the hidden blocks of the student view (as :class:`MaskedReconstruction`).
        noise: standard deviation of the student view's Gaussian noise (images are normalised).
        teacher_decay: None for the network itself as teacher; else the decay ``d`` of the
            averaged teacher, updated before each use as ``t = a * t + (1 - a) * w`` with
            ``a = min(d, 1 - 1 / (n + 1))`` after ``n`` updates (so a young teacher follows fast).

    Example:
        >>> from unimed.networks.unimednet import unimed_tiny
        >>> net = unimed_tiny()
        >>> loss = PseudoLabelConsistency(["lung_tumor"], threshold=0.5, block=8)(net, torch.randn(2, 1, 16, 16, 16))
        >>> bool(loss >= 0)
        True
    """

    def __init__(self, labels: Sequence[str], threshold: float = 0.9, block: int = 8, ratio: float = 0.25,
                 noise: float = 0.1, teacher_decay: float | None = None):
        super().__init__()
        if not labels:
            raise ValueError("consistency needs the label names to prompt; got none")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if not 0 <= ratio < 1:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if teacher_decay is not None and not 0 < teacher_decay < 1:
            raise ValueError(f"teacher_decay must be in (0, 1) or None, got {teacher_decay}")
        self.labels = list(labels)
        self.threshold, self.block, self.ratio, self.noise = threshold, block, ratio, noise
        self.teacher_decay = teacher_decay
        self._average: list[UniMed] = []  # a list, so that nn.Module does not register it
        self.updates = 0

    @property
    def teacher(self) -> UniMed | None:
        """The averaged teacher, or None before its first use (or without ``teacher_decay``)."""
        return self._average[0] if self._average else None

    @torch.no_grad()
    def _update_teacher(self, model: UniMed) -> UniMed:
        """Move the averaged teacher towards ``model``'s weights (a copy of them at first, or
        when ``model`` has other shapes or another device)."""
        live = dict(model.named_parameters())
        ours = dict(self.teacher.named_parameters()) if self.teacher is not None else {}
        fits = bool(ours) and ours.keys() == live.keys() and all(
            live[name].shape == p.shape and live[name].device == p.device for name, p in ours.items())
        if not fits:
            self._average[:] = [copy.deepcopy(model).eval().requires_grad_(False)]
            self.updates = 0
        else:
            a = min(self.teacher_decay, 1 - 1 / (self.updates + 1))
            for name, p in ours.items():
                p.mul_(a).add_(live[name].detach(), alpha=1 - a)
        self.updates += 1
        return self.teacher

    def teacher_state(self) -> dict | None:
        """The averaged teacher's weights and update count (for a resumable run's state; the
        checkpoint never holds them), or None before its first use."""
        return None if self.teacher is None else {"weights": self.teacher.state_dict(), "updates": self.updates}

    def load_teacher_state(self, model: UniMed, state: dict | None) -> None:
        """Take back :meth:`teacher_state`: a copy of ``model`` (for its shapes and device) with
        the saved weights; None drops the teacher."""
        if state is None:
            self._average[:] = []
            self.updates = 0
            return
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
        teacher.load_state_dict(state["weights"])
        self._average[:] = [teacher]
        self.updates = int(state["updates"])

    def _logits(self, model: UniMed, images: torch.Tensor, modalities: torch.Tensor | None) -> torch.Tensor:
        ids, pad = model.prompt([(Task.SEGMENTATION, self.labels)] * images.shape[0])  # on the model's device
        return model.decode(model.encode(images, modalities), ids, pad)["mask_logits"]

    def forward(self, model: UniMed, images: torch.Tensor, generator: torch.Generator | None = None,
                modalities: torch.Tensor | None = None) -> torch.Tensor:
        source = model if self.teacher_decay is None else self._update_teacher(model)
        with torch.no_grad():
            teacher = self._logits(source, images, modalities).float().softmax(1)
        confidence, target = teacher.max(1)
        axes = [2 + a for a in range(3) if images.shape[2 + a] > 1]
        hidden = block_mask(tuple(images.shape), self.block, self.ratio, generator).to(images.device)
        noise = torch.randn(images.shape, generator=generator).to(images.device) * self.noise
        student = (images * (1 - hidden) + noise).flip(axes)
        logits = self._logits(model, student, modalities).flip(axes)
        ce = F.cross_entropy(logits.float(), target, reduction="none")
        return (ce * (confidence >= self.threshold)).sum() / ce.numel()


def check_ssl_loss(kind: str) -> None:
    """Raise ``ValueError`` naming :data:`SSL_LOSSES` unless ``kind`` is one of them."""
    if kind not in SSL_LOSSES:
        raise ValueError(f"unknown ssl loss {kind!r}; known: {', '.join(SSL_LOSSES)}")


def make_ssl(kind: str, *, mask_dim: int, labels: Sequence[str] = (), block: int = 16, ratio: float = 0.5,
             threshold: float = 0.9, teacher_decay: float = 0.99) -> nn.Module:
    """The unsupervised loss ``kind`` (one of :data:`SSL_LOSSES`); ``block`` and ``ratio`` are
    the reconstruction's, ``labels`` and ``threshold`` the consistency's, ``teacher_decay`` the
    mean teacher's."""
    check_ssl_loss(kind)
    if kind == "reconstruction":
        return MaskedReconstruction(mask_dim, block, ratio)
    return PseudoLabelConsistency(labels, threshold, teacher_decay=teacher_decay if kind == "mean_teacher" else None)
