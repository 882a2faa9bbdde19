"""Token sequences: the ids the composed decoder emits, the payloads they point at, and the
two ids every vocabulary fixes (``<pad>`` 0, ``<eos>`` 1).

Kept apart from :mod:`unimed.tokens` so that the task modules (:mod:`unimed.tasks`), which the
vocabulary itself reads, can build and check sequences without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["PAD_ID", "EOS_ID", "TokenSequence", "TokenDecodeError", "check_scores", "score_list"]

PAD_ID = 0
EOS_ID = 1


class TokenDecodeError(ValueError):
    """A token sequence that is not well formed; the message names the position and the problem."""


@dataclass
class TokenSequence:
    """Token ids plus the payloads they point at.

    Attributes:
        ids: token ids, starting with a task token and ending with ``<eos>`` and optional ``<pad>``.
        masks: binary masks, one per mask-reference: ``masks[q]`` is the payload of ``<mask:q>``.
        scores: optional score of each object, one per label token, in sequence order.
        shape: spatial shape of a segmentation; needed to decode one that has no masks.
    """

    ids: list[int]
    masks: list[np.ndarray] | None = None
    scores: list[float] | None = None
    shape: tuple[int, ...] | None = None


def check_scores(scores: Sequence[float] | None, n: int, what: str) -> None:
    """Raise ValueError unless ``scores`` is None or holds one score per each of ``n`` ``what``."""
    if scores is not None and len(scores) != n:
        raise ValueError(f"got {len(scores)} scores for {n} {what}")


def score_list(scores: Sequence[float] | None) -> list[float] | None:
    """Scores as a list of floats (None stays None)."""
    return None if scores is None else [float(s) for s in scores]
