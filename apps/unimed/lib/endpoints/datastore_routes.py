"""``PUT /datastore/image`` and ``PUT /datastore/label`` that check first and leave no upload behind.

MONAI Label's own routes write the upload to the system temp folder with the default mode
(readable by all), delete it only after a successful request, log the raw ids, and answer a
malformed ``params`` with a 500. These routes, matched in front of MONAI Label's with the
same parameters, roles and answers, check the id, tag and ``params`` before reading the
upload, write it to a private file inside the datastore
(:meth:`~lib.datastore.local.UniMedLocalDatastore.upload`) that is deleted whatever happens,
and let the datastore's 4xx through.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional

from fastapi import Depends, File, Form, UploadFile
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag

from lib.datastore.local import UniMedLocalDatastore
from lib.datastore.names import check_name
from lib.endpoints.routes import add_route_first, parse_params
from unimed.datasets.datastore import image_stem

__all__ = ["register_datastore_routes"]

logger = logging.getLogger(__name__)


def register_datastore_routes(fastapi_app, app_instance: Callable[[], Any]) -> None:
    """Put the checked upload routes in front of MONAI Label's.

    Args:
        fastapi_app: the server's FastAPI application (``monailabel.app.app``).
        app_instance: returns the running ``MONAILabelApp`` (its datastore must be a
            :class:`~lib.datastore.local.UniMedLocalDatastore`).
    """
    prefix = f"{settings.MONAI_LABEL_API_STR}/datastore"
    annotator = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))

    def store() -> UniMedLocalDatastore:
        datastore = app_instance().datastore()
        if not isinstance(datastore, UniMedLocalDatastore):
            raise TypeError(f"the checked upload routes need a UniMedLocalDatastore, not {type(datastore).__name__}")
        return datastore

    def put_image(image: Optional[str] = None, params: str = Form("{}"), file: UploadFile = File(...),
                  user: User = annotator) -> dict:
        filename = os.path.basename((file.filename or "").replace("\\", "/"))
        image_id = check_name(image if image is not None else image_stem(filename), "image id")
        info = parse_params(params)
        if user and user.username:
            info["user"] = user.username
        datastore = store()
        with datastore.upload(file.file, file.filename, "the uploaded image") as path:
            image_id = datastore.add_image(image_id, str(path), info)
        return {"image": image_id}

    def put_label(image: str, params: str = Form("{}"), tag: str = DefaultLabelTag.FINAL.value,
                  label: UploadFile = File(...), user: User = annotator) -> dict:
        check_name(image, "image id")
        tag = check_name(tag or DefaultLabelTag.FINAL.value, "label tag")
        info = parse_params(params)
        if user and user.username:
            info["user"] = user.username
        datastore = store()
        with datastore.upload(label.file, label.filename, "the uploaded label") as path:
            label_id = datastore.save_label(image, str(path), tag, info)
        res = app_instance().on_save_label(image, label_id) or {}
        res.update({"image": image, "label": label_id})
        return res

    added = [add_route_first(fastapi_app, path, endpoint, ["PUT"])
             for path, endpoint in ((f"{prefix}/", put_image), (f"{prefix}/image", put_image), (f"{prefix}/label", put_label))]
    if any(added):
        logger.info("datastore uploads are checked and kept private")
