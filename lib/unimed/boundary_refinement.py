"""The clicked object's boundary at the image's own resolution, from the image's appearance.

The network answers clicks on its pixel grid (twice the feature stride), and the answer's
boundary is that grid's logits resized to the image: smooth, and where a patient unlike
the training ones is concerned, a few voxels off all round. The voxels themselves say where the
boundary is when the object differs from its surroundings in intensity (a tumour on FLAIR
and T2). So, per click answer, a two-class Gaussian model of the image's channels is fitted to
the voxels the network is sure of (inside the object, and a ring ``band`` mm wide around it)
and to the clicks; its log-likelihood ratio is added to the object's logit within ``band``
mm of the network's boundary, with a weight that grows with how well the model separates
its own samples (the area under its ROC curve): an object that looks like its surroundings
(a thin structure on one contrast, a tumour touching the chest wall) keeps the network's
boundary. Nothing is learnt: the same rule holds for a label the network was never taught.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from monai.metrics import compute_roc_auc
from scipy import ndimage

__all__ = ["BoundaryRefinement", "RefinementReport", "refine_object_logit", "standardised_channels"]


@dataclass(frozen=True)
class BoundaryRefinement:
    """How :func:`refine_object_logit` moves a boundary.

    Attributes:
        weight: the appearance log-likelihood ratio's weight at full trust.
        band: millimetres (voxels of an image with no voxel size), either side of the network's
            boundary, that may change; the ring of background samples is as wide. In millimetres,
            as the network's boundary is off by a few of its grid's 1.875 mm voxels whatever the
            image's: a coarse image's band spans fewer voxels.
        confident: least probability of a voxel the network is sure of (object, or 1 minus it
            for background).
        auc_low: separability (ROC AUC of the model on its own samples) at and below which
            the appearance is not used.
        auc_high: separability from which it is used at full ``weight``; linear in between.
        click_radius: voxels around each click that join its class's samples.
        max_samples: most samples per class the model is fitted to (drawn at random, seeded).
        min_samples: fewest samples per class for a fit; fewer leave the logit as it is.
    """

    weight: float = 4.0
    band: float = 10.0
    confident: float = 0.9
    auc_low: float = 0.85
    auc_high: float = 0.95
    click_radius: int = 2
    max_samples: int = 20000
    min_samples: int = 50

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")
        if self.band <= 0:
            raise ValueError(f"band must be > 0, got {self.band}")
        if not 0.5 < self.confident < 1:
            raise ValueError(f"confident must be in (0.5, 1), got {self.confident}")
        if not 0.5 <= self.auc_low < self.auc_high <= 1:
            raise ValueError(f"need 0.5 <= auc_low < auc_high <= 1, got {self.auc_low} and {self.auc_high}")
        if self.min_samples < 2 or self.max_samples < self.min_samples:
            raise ValueError(f"need 2 <= min_samples <= max_samples, got {self.min_samples} and {self.max_samples}")


@dataclass(frozen=True)
class RefinementReport:
    """What one refinement did: the model's separability (None: no fit) and the weight used."""

    auc: float | None
    weight: float


def standardised_channels(image: np.ndarray) -> np.ndarray:
    """``(X, Y, Z, C)`` of a channel-first image, each channel standardised over the body: the
    voxels with any nonzero channel when at least 5 % of the image is exactly zero (a skull-
    stripped or padded MR), else every voxel.

    Example:
        >>> x = np.zeros((2, 4, 4, 4), np.float32); x[:, 1:3, 1:3, 1:3] = np.random.rand(2, 2, 2, 2) + 1
        >>> s = standardised_channels(x)
        >>> s.shape, abs(float(s[1:3, 1:3, 1:3, 0].mean())) < 1e-5
        ((4, 4, 4, 2), True)
    """
    image = np.asarray(image, dtype=np.float32)
    zero = np.all(image == 0, axis=0)
    body = ~zero if zero.mean() >= 0.05 else np.ones(zero.shape, bool)
    out = np.empty(image.shape[1:] + (image.shape[0],), np.float32)
    for c, channel in enumerate(image):
        values = channel[body]
        out[..., c] = (channel - values.mean()) / (values.std() + 1e-6)
    return out


def _gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    cov = np.atleast_2d(np.cov(x.T)) + 1e-3 * np.eye(x.shape[1])
    return x.mean(0), np.linalg.inv(cov), float(np.linalg.slogdet(cov)[1])


def _log_likelihood(x: np.ndarray, model: tuple[np.ndarray, np.ndarray, float]) -> np.ndarray:
    mean, inv, logdet = model
    d = x - mean
    return -0.5 * (np.einsum("nc,cd,nd->n", d, inv, d) + logdet)


def _mark(mask: np.ndarray, voxels: Sequence[Sequence[int]], radius: int, value: bool) -> None:
    for v in voxels:
        mask[tuple(slice(max(0, int(a) - radius), int(a) + radius + 1) for a in v)] = value


def refine_object_logit(
    logit: np.ndarray,
    features: np.ndarray,
    foreground: Sequence[Sequence[int]] = (),
    background: Sequence[Sequence[int]] = (),
    config: BoundaryRefinement | None = None,
    seed: int = 0,
    spacing: Sequence[float] | None = None,
) -> tuple[np.ndarray, RefinementReport]:
    """The object's logit with its boundary moved towards the image's own.

    Args:
        logit: ``(X, Y, Z)`` the object's logit against the background, at the image's resolution
            (a 2D image has ``Z = 1``).
        features: ``(X, Y, Z, C)`` the image's channels, standardised (:func:`standardised_channels`).
        foreground: voxel indices ``(i, j, k)`` of foreground clicks.
        background: voxel indices of background clicks.
        config: the rule; default :class:`BoundaryRefinement`.
        seed: seeds the drawing of samples, so that an answer is reproducible.
        spacing: the voxel size in mm along each axis (None: 1), which ``config.band`` is
            measured in.

    Returns:
        The refined logit (a copy; ``logit`` itself where nothing changed) and a report.

    Raises:
        ValueError: ``features`` of another spatial shape than ``logit``, or a ``spacing`` not
            positive, one per axis.

    Example:
        >>> truth = np.zeros((40, 40, 1), bool); truth[10:30, 10:30] = True  # a bright square
        >>> image = np.where(truth, 2.0, 0.0)[..., None] + np.random.default_rng(0).normal(0, 0.2, (40, 40, 1, 1))
        >>> logit = np.full((40, 40, 1), -5.0); logit[12:28, 12:28] = 5.0  # the network: 2 voxels too small
        >>> refined, report = refine_object_logit(logit, image.astype(np.float32))
        >>> int(((logit > 0) != truth).sum()), int(((refined > 0) != truth).sum())  # voxels wrong
        (144, 7)
        >>> round(report.auc, 2), round(report.weight, 1)
        (0.92, 2.6)
    """
    config = config or BoundaryRefinement()
    if features.shape[:-1] != logit.shape:
        raise ValueError(f"features of spatial shape {features.shape[:-1]} for a logit of shape {logit.shape}")
    spacing = tuple(float(v) for v in spacing) if spacing is not None else (1.0,) * logit.ndim
    if len(spacing) != logit.ndim or min(spacing) <= 0:
        raise ValueError(f"spacing must be {logit.ndim} positive numbers, got {spacing}")
    obj = logit > 0
    if not obj.any():
        return logit, RefinementReport(None, 0.0)
    # work inside the object's bounding box grown by the band: the rest cannot change
    reach = [int(np.ceil(config.band / v)) + 1 for v in spacing]
    lo = [max(0, int(i.min()) - r) for i, r in zip(np.nonzero(obj), reach)]
    hi = [min(n, int(i.max()) + r + 1) for i, n, r in zip(np.nonzero(obj), obj.shape, reach)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub_logit, sub_obj, sub_feat = logit[box], obj[box], features[box]
    outside = ndimage.distance_transform_edt(~sub_obj, sampling=spacing)
    inside = ndimage.distance_transform_edt(sub_obj, sampling=spacing)
    ring = (outside > 0) & (outside <= config.band)
    zone = ring | ((inside > 0) & (inside <= config.band))
    prob = 1.0 / (1.0 + np.exp(-np.clip(sub_logit, -30, 30)))
    fg_samples = prob > config.confident
    bg_samples = ring & (prob < 1 - config.confident)
    shift = [-a for a in lo]
    fg_local = [[int(v) + s for v, s in zip(p, shift)] for p in foreground]
    bg_local = [[int(v) + s for v, s in zip(p, shift)] for p in background]
    _mark(fg_samples, fg_local, config.click_radius, True)
    _mark(bg_samples, fg_local, config.click_radius, False)
    _mark(bg_samples, bg_local, config.click_radius, True)
    _mark(fg_samples, bg_local, config.click_radius, False)
    rng = np.random.default_rng(seed)
    xf, xb = sub_feat[fg_samples], sub_feat[bg_samples]
    if min(len(xf), len(xb)) < config.min_samples:
        return logit, RefinementReport(None, 0.0)
    xf = xf[rng.choice(len(xf), min(config.max_samples, len(xf)), replace=False)]
    xb = xb[rng.choice(len(xb), min(config.max_samples, len(xb)), replace=False)]
    fg_model, bg_model = _gaussian(xf), _gaussian(xb)
    scores = np.concatenate([_log_likelihood(x, fg_model) - _log_likelihood(x, bg_model) for x in (xf, xb)])
    truth = np.concatenate([np.ones(len(xf)), np.zeros(len(xb))])
    auc = float(compute_roc_auc(torch.from_numpy(scores), torch.from_numpy(truth)))
    trust = min(1.0, max(0.0, (auc - config.auc_low) / (config.auc_high - config.auc_low)))
    weight = config.weight * trust
    if weight == 0:
        return logit, RefinementReport(auc, 0.0)
    ratio = _log_likelihood(sub_feat[zone], fg_model) - _log_likelihood(sub_feat[zone], bg_model)
    out = logit.copy()
    region = out[box]
    region[zone] = sub_logit[zone] + weight * np.clip(ratio, -10.0, 10.0)
    return out, RefinementReport(auc, weight)
