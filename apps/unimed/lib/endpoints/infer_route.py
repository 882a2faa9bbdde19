"""``POST /infer/{model}`` off the event loop, a bounded number at a time.

MONAI Label declares its infer route ``async`` and runs the whole inference inside it, so
while one image is inferred the server's event loop answers nothing: ``GET /info`` (a
health check) waits behind every queued inference. The route registered here has the same
path, parameters, access role and answers (it calls MONAI Label's own ``run_inference``),
but runs it in the thread pool, at most ``max_concurrent`` at once: memory stays that of
``max_concurrent`` images, and a request waiting its turn waits on the event loop, holding
no thread that other endpoints need.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import monailabel.endpoints.infer as endpoint
from fastapi import BackgroundTasks, Depends, FastAPI, File, Form, HTTPException, UploadFile
from monailabel.config import settings
from monailabel.endpoints.infer import ResultType  # module level: the route's annotations are resolved by name
from monailabel.endpoints.user.auth import RBAC, User
from starlette.concurrency import run_in_threadpool

from lib.endpoints.routes import add_route_first, parse_params
from lib.infers.image_access import REQUEST_KEYS, PrivateUploads

__all__ = ["register_threaded_infer_route"]

PATH = "/infer/{model}"


def check_params(params: str) -> None:
    """The request's ``params`` must be a JSON object (:func:`~lib.endpoints.routes.parse_params`)
    that does not set what the endpoint sets itself (``image``, ``model``, ``session``): an HTTP
    400 names the problem. ``label``, where the endpoint puts a label file's path, may only name a
    structure (DeepEdit's click requests do): a plain name, no path.

    Example:
        >>> check_params('{"image": "/etc/passwd"}')
        Traceback (most recent call last):
        ...
        fastapi.exceptions.HTTPException: 400: params may not set 'image': name the image with ?image=ID or send it as the file
        >>> check_params('{"label": "edema", "edema": [[1, 2, 3]]}')
    """
    value = parse_params(params)
    for key in REQUEST_KEYS:
        if key not in value:
            continue
        if key == "label" and isinstance(value[key], str) and not any(c in value[key] for c in "/\\"):
            continue
        if key == "label":
            raise HTTPException(400, f"params 'label' names a structure (a label name, no path), got {value[key]!r}")
        raise HTTPException(400, f"params may not set {key!r}: name the image with ?image=ID or send it as the file")


def register_threaded_infer_route(server: FastAPI, max_concurrent: int = 1, uploads: PrivateUploads | None = None) -> None:
    """Replace MONAI Label's ``POST /infer/{model}`` with one run in the thread pool, gated.

    The route also checks ``params`` (:func:`check_params`), and writes an image sent with the
    request to ``uploads`` (private, removed when the request ends) instead of the system
    temporary folder. A label file is refused: UniMed's models take none.

    Args:
        server: the running MONAI Label FastAPI application.
        max_concurrent: inferences run at once; the others wait their turn.
        uploads: where sent images go; without it MONAI Label's own handling applies.

    Raises:
        ValueError: ``max_concurrent`` is not positive.

    Example:
        >>> register_threaded_infer_route(server, max_concurrent=1)  # doctest: +SKIP
    """
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
    gate = asyncio.Semaphore(max_concurrent)

    async def api_run_inference(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),
        file: UploadFile = File(None),
        label: UploadFile = File(None),
        output: Optional[ResultType] = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        check_params(params)
        if not file and not image and not session_id:
            raise HTTPException(400, "no image: name one with ?image=ID, or send it as the file")
        if label is not None and uploads is not None:
            raise HTTPException(400, "UniMed's models take no label file with an infer request")

        def run() -> Any:
            # looked up on the module at each call: the app may replace the module's DICOM SEG converter
            if file is not None and uploads is not None:
                with uploads.receive(file.file, file.filename) as upload:
                    return endpoint.run_inference(background_tasks, model, str(upload), session_id, params, None, label,
                                                  output)
            return endpoint.run_inference(background_tasks, model, image, session_id, params, file, label, output)

        async with gate:
            return await run_in_threadpool(run)

    # ahead of MONAI Label's route, which then never matches (it stays in the API docs: same contract)
    add_route_first(server, PATH, api_run_inference, ["POST"])
