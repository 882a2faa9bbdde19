"""``POST /train/{model}`` that checks the request before MONAI Label queues it.

MONAI Label's own route hands the body straight to its task queue: a bad value is accepted with
200, and the run then ends in ERROR minutes later (or a nested body is silently ignored). This
route answers first, in front of MONAI Label's: 404 for a model that does not train, 422 with
the parameter's name for a bad body; a good request goes on to MONAI Label's ``run_model``
unchanged, for reviewers and admins (MONAI Label's own: admins only).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from lib.endpoints.routes import add_route_first

__all__ = ["register_train_route"]

logger = logging.getLogger(__name__)


def register_train_route(fastapi_app, trainers: Callable[[], list[str]], check: Callable[[dict | None], Any]) -> None:
    """Put the checking ``POST /train/{model}`` in front of MONAI Label's.

    Args:
        fastapi_app: the server's FastAPI application (``monailabel.app.app``).
        trainers: returns the names of the models that train.
        check: raises ``ValueError`` with a message naming the problem for a bad body.
    """
    from fastapi import Depends, HTTPException
    from monailabel.config import settings
    from monailabel.endpoints.train import run_model
    from monailabel.endpoints.user.auth import RBAC, User

    path = f"{settings.MONAI_LABEL_API_STR}/train/{{model}}"

    async def checked_run_model(
        model: str,
        params: Optional[dict] = None,
        run_sync: Optional[bool] = False,
        enqueue: Optional[bool] = False,
        user: User = Depends(RBAC([settings.MONAI_LABEL_AUTH_ROLE_ADMIN, settings.MONAI_LABEL_AUTH_ROLE_REVIEWER])),
    ):
        known = trainers()
        if model not in known:
            raise HTTPException(404, f"model {model!r} does not train; models that train: {', '.join(known)}")
        try:
            check(params)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        return run_model(model, params, run_sync, enqueue)

    if add_route_first(fastapi_app, path, checked_run_model, ["POST"]):
        logger.info("train requests are checked before they are queued")
