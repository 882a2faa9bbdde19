"""The served model: one checkpoint, one predictor, reloaded when the checkpoint file changes."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch

from unimed.checkpoint import CheckpointError, load_checkpoint
from unimed.model_store import TAUGHT_KEY
from unimed.networks.unimednet import UniMed, unimed_small
from unimed.predictor import Predictor

__all__ = ["ModelService"]

logger = logging.getLogger(__name__)


class ModelService:
    """Holds the network every infer task shares and hands out its :class:`Predictor`.

    The checkpoint is read lazily and again whenever its modification time changes, so a
    training run that publishes a new file is served on the next request. With no
    checkpoint the service still serves, with untrained weights, and says so in :meth:`info`
    and in the log; nothing is ever downloaded.

    Args:
        path: the published checkpoint.
        predictor_kwargs: passed to :class:`Predictor`.

    Example:
        >>> svc = ModelService("/nonexistent/unimed.pt")
        >>> svc.info()["trained"]
        False
    """

    def __init__(self, path: str | Path, **predictor_kwargs: Any):
        self.path = Path(path)
        self.predictor_kwargs = predictor_kwargs
        self._lock = threading.Lock()
        self._predictor: Predictor | None = None
        self._stamp: float | None = None
        self._meta: dict[str, Any] = {}
        self._error: str | None = None

    def _current_stamp(self) -> float | None:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def predictor(self) -> Predictor:
        """The predictor for the checkpoint as it is on disk now."""
        stamp = self._current_stamp()
        with self._lock:
            if self._predictor is None or stamp != self._stamp:
                self._predictor = Predictor(self._load(stamp), **self.predictor_kwargs)
                self._stamp = stamp
            return self._predictor

    @property
    def model(self) -> UniMed:
        return self.predictor().model

    def _load(self, stamp: float | None) -> UniMed:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if stamp is not None:
            try:
                model, self._meta = load_checkpoint(self.path, device)
                self._error = None
                logger.info("UniMed checkpoint %s loaded (version %s)", self.path, self._meta.get("version", "?"))
                return model
            except CheckpointError as exc:
                self._error = str(exc)
                logger.error("cannot load the UniMed checkpoint, serving untrained weights: %s", exc)
        else:
            self._error = f"no checkpoint at {self.path}"
            logger.warning("no UniMed checkpoint at %s: serving UNTRAINED weights (train one with main.py pretrain)", self.path)
        self._meta = {}
        torch.manual_seed(0)
        return unimed_small().to(device).eval()

    def info(self) -> dict[str, Any]:
        """What is served: the checkpoint path, whether it is trained, its version, when it was
        trained, until when the datastore's labels were read for it (``labels_until``, seconds
        since the epoch; None for a model not trained on the datastore), the labels taught after
        pretraining with their cases (``taught_labels``), and whether it takes click and box
        prompts (``clicks``)."""
        model = self.predictor().model
        return {
            "checkpoint": str(self.path),
            "trained": self._error is None,
            "version": self._meta.get("version"),
            "trained_at": self._meta.get("trained_at"),
            "labels_until": self._meta.get("labels_until"),
            "taught_labels": self._meta.get(TAUGHT_KEY, {}),
            "problem": self._error,
            "clicks": model.click_encoder is not None,
        }
