"""``PUT`` and ``DELETE /model/{model}``: replace the served checkpoint only with one that loads,
and never answer 200 while leaving the server on untrained weights.

MONAI Label's own routes copy any uploaded bytes over the served file and move the file aside on
delete, both for any annotator; the server then silently serves untrained weights. These routes
are matched first:

- ``PUT`` (reviewer or admin): the upload must load with :func:`unimed.checkpoint.load_checkpoint`
  and describe the same network as the served one, else 422 and the served model is unchanged; a
  good upload is published as the next numbered version (``main.py versions`` lists it).
- ``DELETE`` (admin): withdraws the served version by publishing the stored version before it
  again; with no earlier version it is refused with 409, since the server would be left with
  untrained weights.
"""


import logging
import os
import shutil
import tempfile
from typing import Callable

from lib.endpoints.routes import add_route_first
from unimed.checkpoint import CheckpointError, load_checkpoint
from unimed.model_store import ModelStore
from unimed.service import ModelService

__all__ = ["register_model_routes"]

logger = logging.getLogger(__name__)


def register_model_routes(fastapi_app, models: Callable[[], list[str]], service: ModelService,
                          store: ModelStore) -> None:
    """Put the checking ``PUT`` and ``DELETE /model/{model}`` in front of MONAI Label's.

    Args:
        fastapi_app: the server's FastAPI application (``monailabel.app.app``).
        models: the names of the models served from ``store``'s published checkpoint.
        service: the served model (its network is what an upload must match).
        store: the model folder whose published file the server reads.
    """
    from fastapi import Depends, HTTPException, UploadFile
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC, User

    path = f"{settings.MONAI_LABEL_API_STR}/model/{{model}}"

    def known(model: str) -> None:
        if model not in models():
            raise HTTPException(404, f"unknown model {model!r}; models: {', '.join(models())}")

    def replace_model(model: str, file: UploadFile,
                      user: User = Depends(RBAC([settings.MONAI_LABEL_AUTH_ROLE_ADMIN,
                                                 settings.MONAI_LABEL_AUTH_ROLE_REVIEWER]))):
        known(model)
        store.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="upload.", suffix=".pt", dir=store.folder)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(file.file, out)
            try:
                network, meta = load_checkpoint(tmp)
            except CheckpointError as exc:
                reason = str(exc).replace(tmp, "the upload").splitlines()[0][:300]
                raise HTTPException(422, f"the upload is not a UniMed checkpoint, the served model is unchanged: "
                                         f"{reason}") from exc
            served = service.model.config.to_dict()
            uploaded = network.config.to_dict()
            if uploaded != served:
                differ = sorted(k for k in set(served) | set(uploaded) if served.get(k) != uploaded.get(k))
                raise HTTPException(422, "the uploaded network differs from the served one in "
                                         f"{', '.join(differ)}; the served model is unchanged")
            store.keep_published()  # so that DELETE can return to what is served now
            version = store.publish(network, {**meta, "kind": "upload", "uploaded_by": user.username})
        finally:
            os.unlink(tmp)
        logger.info("model version %d uploaded by %s is served", version.number, user.username)
        stat = store.published.stat()
        return {"version": version.number, "modified_time": int(stat.st_mtime)}

    def withdraw_model(model: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
        known(model)
        current = store.current_version()
        earlier = [v.number for v in store.versions() if current is None or v.number < current]
        if not earlier:
            raise HTTPException(409, f"refused: version {current} is the only model; without it the server would "
                                     "serve untrained weights (upload a replacement with PUT instead)")
        store.rollback(earlier[-1])
        logger.info("model version %s withdrawn by %s; version %d is served", current, user.username, earlier[-1])
        return {"withdrawn": current, "served": earlier[-1],
                "message": f"version {current} withdrawn; version {earlier[-1]} is served"}

    add_route_first(fastapi_app, path, replace_model, ["PUT"])
    add_route_first(fastapi_app, path, withdraw_model, ["DELETE"])
