"""A small page, served by the app at ``/unimed/``, that shows what OHIF cannot: UniMed's
detection boxes and diagnosis scores for an image of the datastore (OHIF's MONAI Label panel
lists segmentation models only). It calls the ordinary infer endpoints from the browser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

__all__ = ["PAGE", "PICTURE_SUFFIXES", "register_results_page"]

#: the page itself (HTML and a little JavaScript, no external resources)
PAGE = Path(__file__).with_name("static") / "results.html"

#: 2D pictures the page draws boxes on
PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def register_results_page(fastapi_app, datastore: Callable[[], object], prefix: str = "/unimed") -> None:
    """Add ``GET {prefix}/`` (the page) and ``GET {prefix}/images`` (``[{"id", "picture"}]``; for
    MONAI Label's ``user`` role when auth is on, as the datastore's own listing).

    Args:
        fastapi_app: the server's FastAPI application (``monailabel.app.app``).
        datastore: returns the app's datastore when called.
        prefix: where the page lives.
    """
    from fastapi import Depends
    from fastapi.responses import HTMLResponse
    from monailabel.config import settings
    from monailabel.datastore.dicom import DICOMWebDatastore
    from monailabel.datastore.local import LocalDatastore
    from monailabel.endpoints.user.auth import RBAC

    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    def images() -> list[dict]:
        store = datastore()
        # files on this machine; a PACS (a LocalDatastore subclass) would have to download every series to tell
        local = isinstance(store, LocalDatastore) and not isinstance(store, DICOMWebDatastore)
        return [{"id": image_id, "picture": local and store.get_image_uri(image_id).lower().endswith(PICTURE_SUFFIXES)}
                for image_id in store.list_images()]

    if any(getattr(route, "path", None) == f"{prefix}/" for route in fastapi_app.routes):
        return
    fastapi_app.add_api_route(f"{prefix}/", page, methods=["GET"], include_in_schema=False)
    fastapi_app.add_api_route(f"{prefix}/images", images, methods=["GET"], include_in_schema=False,
                              dependencies=[Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))])  # as /datastore
