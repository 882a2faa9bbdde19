"""Which unlabelled images to label next: by uncertainty alone, drawn in proportion to it, or
by uncertainty away from what is already labelled.

Pure functions over arrays, shared by the server's strategies and the active-learning
simulation, so that both pick exactly the same way.

The diversity-aware rule weights each candidate's uncertainty by how far its embedding lies
from the nearest image already labelled or already picked::

    weight = uncertainty * (1 - exp(-(d_min / scale) ** 2))

a Gaussian-kernel novelty in ``[0, 1)``: a near duplicate (``d_min`` close to 0) gets almost
no weight however uncertain it is, an image far from everything keeps its uncertainty. The
bandwidth ``scale`` is the median pairwise embedding distance of the pool (the usual median
heuristic), so the rule needs no tuning per dataset or model. Picks are greedy: each picked
image joins the references before the next pick, so one batch holds no near duplicates either.

The sampled rule (power acquisition, Kirsch et al. 2023, "Stochastic Batch Acquisition") draws
candidates without replacement with probability proportional to ``uncertainty ** beta``: a
batch of the top-k most uncertain images tends to hold k variants of one hard case, and the
scores of a model trained on few labels are noisy, so drawing in proportion keeps most of the
ranking's value while spreading a batch over the pool. The draw is the Gumbel-top-k trick:
the ``k`` largest ``beta * log(u) + Gumbel noise`` (Kool et al. 2019).
"""

from __future__ import annotations

import numpy as np

__all__ = ["select_uncertain", "select_sampled", "select_diverse", "median_distance"]


def _check(uncertainty: np.ndarray, k: int) -> np.ndarray:
    u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if np.isnan(u).any():
        raise ValueError("uncertainty must not hold NaN (score the images first)")
    return u


def select_uncertain(uncertainty: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` most uncertain candidates, most uncertain first (ties: lower index).

    Example:
        >>> select_uncertain(np.array([0.1, 0.9, 0.5]), 2)
        [1, 2]
    """
    u = _check(uncertainty, k)
    order = sorted(range(len(u)), key=lambda i: (-u[i], i))
    return order[: min(k, len(u))]


def select_sampled(uncertainty: np.ndarray, k: int, rng: np.random.Generator, *, beta: float = 1.0) -> list[int]:
    """``k`` candidates drawn without replacement with probability proportional to
    ``uncertainty ** beta``, in draw order (see the module notes).

    Candidates with zero uncertainty come last (lower index first): they are drawn only when
    the others run out.

    Args:
        uncertainty: ``(N,)`` scores of the candidates, each >= 0.
        k: how many to draw.
        rng: the random generator (seed it for a reproducible draw).
        beta: sharpness: 0 draws uniformly, large values approach :func:`select_uncertain`.

    Example:
        >>> picks = select_sampled(np.array([0.0, 0.9, 0.5, 0.2]), 4, np.random.default_rng(0))
        >>> sorted(picks), picks[-1]  # every candidate once; the certain one last
        ([0, 1, 2, 3], 0)
    """
    u = _check(uncertainty, k)
    if (u < 0).any():
        raise ValueError("uncertainty must be >= 0 to draw in proportion to it")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    keys = np.full(len(u), -np.inf)  # a certain candidate: log(0)
    keys[u > 0] = beta * np.log(u[u > 0])
    keys += rng.gumbel(size=len(u))
    order = sorted(range(len(u)), key=lambda i: (-keys[i], i))
    return order[: min(k, len(u))]


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(d2, 0.0, None))


def median_distance(embeddings: np.ndarray) -> float:
    """Median distance between distinct rows (1.0 when there are fewer than two or all coincide)."""
    e = np.asarray(embeddings, dtype=np.float64)
    if len(e) < 2:
        return 1.0
    d = _pairwise(e, e)[np.triu_indices(len(e), 1)]
    m = float(np.median(d))
    return m if m > 0 else 1.0


def select_diverse(
    uncertainty: np.ndarray,
    embeddings: np.ndarray,
    references: np.ndarray | None,
    k: int,
    *,
    scale: float | None = None,
) -> list[int]:
    """Greedy diversity-aware picks: uncertainty weighted by novelty (see the module notes).

    Args:
        uncertainty: ``(N,)`` scores of the candidates.
        embeddings: ``(N, D)`` their embeddings.
        references: ``(M, D)`` embeddings of images already labelled or picked; None or empty
            when there are none.
        k: how many to pick.
        scale: kernel bandwidth; by default the median pairwise distance of candidates and
            references.

    Returns:
        Candidate indices in pick order.

    Example:
        >>> emb = np.array([[0.0, 0.0], [0.0, 0.01], [5.0, 5.0]])
        >>> select_diverse(np.array([1.0, 0.99, 0.5]), emb, None, 2)  # the near duplicate loses
        [0, 2]
    """
    u = _check(uncertainty, k)
    e = np.asarray(embeddings, dtype=np.float64).reshape(len(u), -1)
    refs = np.zeros((0, e.shape[1])) if references is None else np.asarray(references, dtype=np.float64).reshape(-1, e.shape[1])
    if scale is None:
        scale = median_distance(np.concatenate([e, refs]))
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    nearest = _pairwise(e, refs).min(1) if len(refs) else np.full(len(u), np.inf)
    picked: list[int] = []
    available = np.ones(len(u), dtype=bool)
    for _ in range(min(k, len(u))):
        weight = u * (1.0 - np.exp(-((nearest / scale) ** 2)))
        weight[~available] = -np.inf
        best = int(np.argmax(weight))  # argmax returns the lowest index among ties
        picked.append(best)
        available[best] = False
        nearest = np.minimum(nearest, _pairwise(e, e[best : best + 1])[:, 0])
    return picked
