"""The scoring method: every image's uncertainty and embedding, stored in the datastore.

MONAI Label runs scoring methods as background jobs (a separate process started by
``AsyncTask``) when the server starts, after each ``next_sample`` and after each training run;
they never hold the infer path. This one skips every image already scored by the served model
version, so after the first pass only new images and new versions cost anything.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Sequence

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from unimed.service import ModelService
from unimed.tasks import Task
from unimed.transforms import ImageLoadError, load_image
from unimed.uncertainty import score_image

__all__ = ["SCORE_KEY", "UncertaintyScoring", "model_tag", "stored_score"]

logger = logging.getLogger(__name__)

#: the image-info key the score lives under
SCORE_KEY = "unimed_al"
#: niceness added to a background scoring process: the server's inferences get the cores first
BACKGROUND_NICE = 15

#: passes over the datastore one scoring run makes at most (one per version published meanwhile)
_MAX_PASSES = 5


def model_tag(service_info: dict[str, Any]) -> dict[str, Any]:
    """What identifies a served model for scoring: its version and when it was trained (an
    untrained or rolled-back model gets its own tag)."""
    return {"version": service_info.get("version"), "trained_at": service_info.get("trained_at")}


def stored_score(datastore: Datastore, image_id: str) -> dict[str, Any] | None:
    """The stored score of an image: ``{"uncertainty", "embedding", "model", "task", "ts"}``."""
    value = datastore.get_image_info(image_id).get(SCORE_KEY)
    return value if isinstance(value, dict) and "uncertainty" in value else None


def yield_cpu_to_server() -> bool:
    """In MONAI Label's background-task process (``python -m monailabel.interfaces.utils.app``),
    lower this process's CPU priority by :data:`BACKGROUND_NICE` and keep torch to one thread,
    so that scoring takes only the cores the server's inferences leave idle. Elsewhere (a
    scoring run inside the server, a test) it changes nothing. Returns whether it did.

    Example:
        >>> yield_cpu_to_server()  # not a MONAI Label background task
        False
    """
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None or spec.name != "monailabel.interfaces.utils.app":
        return False
    import torch

    os.nice(BACKGROUND_NICE)
    torch.set_num_threads(1)
    logger.info("background scoring: niceness +%d, one torch thread", BACKGROUND_NICE)
    return True


class UncertaintyScoring(ScoringMethod):
    """Scores each image not yet scored by the served model (see :mod:`unimed.uncertainty`).

    Labelled images are scored too: their embeddings are what the diversity-aware strategy
    keeps away from.

    Args:
        service: the served model.
        task: whose outputs measure the uncertainty.
        labels: the labels asked for; None for every label of the task.
        top_fraction: share of detection queries averaged (see :func:`unimed.uncertainty.score_image`).

    Request params (``POST /scoring/unimed_uncertainty``): ``force`` (re-score everything).
    Returns a summary ``{"total", "executed", "skipped", "failed", "model", "seconds"}``.
    """

    def __init__(
        self,
        service: ModelService,
        *,
        task: Task | str = Task.SEGMENTATION,
        labels: Sequence[str] | None = None,
        top_fraction: float = 0.1,
    ):
        self.task = Task.parse(task)
        self.labels = list(labels) if labels else None
        self.top_fraction = top_fraction
        self.service = service
        super().__init__(f"UniMed {self.task.value} output entropy and backbone embedding of each image, per model version")

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        yield_cpu_to_server()
        t0 = time.time()
        force = bool(request.get("force", False))
        counts = {"executed": 0, "skipped": 0, "failed": 0}
        for _ in range(_MAX_PASSES):
            # a version published while this run scores makes it start over with the new model,
            # so a running scoring job always ends with the served version's scores
            predictor = self.service.predictor()
            tag = model_tag(self.service.info())
            counts = {"executed": 0, "skipped": 0, "failed": 0}
            complete = self._score_all(datastore, predictor, tag, force, counts)
            if complete and self.service.predictor() is predictor:
                break
            logger.info("a new model version was published during scoring: scoring again")
        summary = {"total": len(datastore.list_images()), **counts, "model": tag, "seconds": round(time.time() - t0, 2)}
        logger.info("uncertainty scoring: %s", summary)
        return summary

    def _score_all(self, datastore: Datastore, predictor: Any, tag: dict[str, Any], force: bool,
                   counts: dict[str, int]) -> bool:
        """One pass over the datastore; False when the served model changed on the way."""
        for image_id in datastore.list_images():
            if self.service.predictor() is not predictor:
                return False
            old = stored_score(datastore, image_id)
            if old is not None and old.get("model") == tag and not force:
                counts["skipped"] += 1
                continue
            try:
                image = load_image(datastore.get_image_uri(image_id))
                score = score_image(predictor, image, self.task, self.labels, top_fraction=self.top_fraction)
            except ImageLoadError as exc:
                logger.warning("cannot score %s: %s", image_id, exc)
                counts["failed"] += 1
                continue
            datastore.update_image_info(image_id, {SCORE_KEY: {
                "uncertainty": round(score.uncertainty, 6),
                "embedding": [round(float(v), 5) for v in score.embedding],
                "model": tag,
                "task": self.task.value,
                "ts": int(time.time()),
            }})
            counts["executed"] += 1
            logger.info("scored %s: uncertainty %.4f (model version %s)", image_id, score.uncertainty, tag["version"])
        return True
