"""Active-learning strategies beside MONAI Label's ``random`` and ``first``.

``uncertainty`` serves the unlabelled image the served model is least sure about;
``uncertainty_sampled`` draws one with probability proportional to its uncertainty;
``diversity`` weights that uncertainty by how far the image lies (backbone embedding) from the
labelled images and from those just served to other annotators (see :mod:`unimed.selection`).
All read the scores :class:`~lib.activelearning.scoring.UncertaintyScoring` stores; they never
run the network, so ``next_sample`` answers at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.activelearning.scoring import stored_score
from unimed.selection import select_diverse, select_sampled, select_uncertain

__all__ = ["PICKS", "UncertaintyStrategy"]

logger = logging.getLogger(__name__)

#: how a strategy picks among the scored images, and what it tells the viewer it does
PICKS = {
    "most": "Most uncertain unlabelled image (entropy of the model's outputs)",
    "sampled": "Unlabelled image drawn with probability proportional to the model's uncertainty",
    "diverse": "Most uncertain unlabelled image, away from labelled and recently served ones (backbone embeddings)",
}


class UncertaintyStrategy(Strategy):
    """Serve an unlabelled image by the served model's uncertainty.

    An image this strategy served within ``recent_seconds`` is not served again meanwhile
    (someone is labelling it) unless nothing else is left; with ``pick="diverse"`` its
    embedding also counts as labelled. Stale scores (from an earlier model version) are used
    until the background scoring replaces them; images not scored yet are served only when
    none is.

    Args:
        pick: ``"most"`` (the most uncertain), ``"sampled"`` (drawn with probability
            proportional to the uncertainty) or ``"diverse"`` (the most uncertain, penalising
            images close to labelled or recently served ones).
        recent_seconds: how long a served image is reserved.
        rng: the generator of the ``"sampled"`` draws (default: a fresh, unseeded one).
    """

    def __init__(self, *, pick: str, recent_seconds: float = 3600.0, rng: np.random.Generator | None = None):
        if pick not in PICKS:
            raise ValueError(f"pick must be one of {', '.join(PICKS)}, got {pick!r}")
        if recent_seconds < 0:
            raise ValueError(f"recent_seconds must be >= 0, got {recent_seconds}")
        self.pick = pick
        self.recent_seconds = recent_seconds
        self.rng = rng if rng is not None else np.random.default_rng()
        super().__init__(PICKS[pick])

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        unlabelled = sorted(datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels")))
        if not unlabelled:
            return None
        strategy = request.get("strategy", "")
        now = time.time()

        def served_recently(image_id: str) -> bool:
            ts = datastore.get_image_info(image_id).get("strategy", {}).get(strategy, {}).get("ts", 0)
            return now - ts < self.recent_seconds

        recent = [i for i in unlabelled if served_recently(i)]
        candidates = [i for i in unlabelled if i not in recent] or unlabelled
        scores = {i: stored_score(datastore, i) for i in candidates}
        scored = [i for i in candidates if scores[i] is not None]
        if not scored:
            logger.info("%s: no image is scored yet (scoring runs in the background); serving %s", strategy, candidates[0])
            return {"id": candidates[0], "uncertainty": None}
        u = np.array([scores[i]["uncertainty"] for i in scored], dtype=np.float64)
        if self.pick == "diverse":
            emb = np.array([scores[i]["embedding"] for i in scored], dtype=np.float64)
            unl = set(unlabelled)
            # references: labelled images, and images served recently that are not candidates now
            ref_ids = [i for i in datastore.list_images() if i not in unl] + [i for i in recent if i not in scores]
            ref_scores = [stored_score(datastore, i) for i in ref_ids]
            refs = [s["embedding"] for s in ref_scores if s is not None]
            best = select_diverse(u, emb, np.array(refs, dtype=np.float64) if refs else None, 1)[0]
        elif self.pick == "sampled":
            best = select_sampled(u, 1, self.rng)[0]
        else:
            best = select_uncertain(u, 1)[0]
        image = scored[best]
        logger.info("%s: serving %s (uncertainty %.4f, model %s)", strategy, image, u[best], scores[image]["model"])
        return {"id": image, "uncertainty": float(u[best]), "scored_by": scores[image]["model"]}
