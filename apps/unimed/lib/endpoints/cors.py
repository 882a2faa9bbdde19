"""Cross-origin access only for configured origins: the app's conf ``cors_origins``
(comma-separated, ``main.py serve --cors-origin URL``) and ``MONAI_LABEL_CORS_ORIGINS``.

MONAI Label allows every origin, with credentials, when ``MONAI_LABEL_CORS_ORIGINS`` is empty,
so any web page an annotator opens may call the server. Its setting cannot be used to narrow
that either: ``monailabel start_server`` fails to start when it is set (it cannot write the
pydantic URLs as JSON), and pydantic writes ``http://host:port`` as ``http://host:port/`` while a
browser sends no slash. :func:`restrict_cors` rebuilds the server's CORS layer with the
configured origins as browsers send them, and with none when none is configured (the OHIF
viewer the server itself serves is same-origin and needs none).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

__all__ = ["allowed_origins", "restrict_cors"]

logger = logging.getLogger(__name__)


def allowed_origins(configured) -> list[str]:
    """The configured origins as a browser sends them: ``scheme://host[:port]``, no slash.

    Raises:
        ValueError: an entry that is not an http(s) origin (``*`` included).

    Example:
        >>> allowed_origins(["http://127.0.0.1:8000/", "https://ohif.example.org"])
        ['http://127.0.0.1:8000', 'https://ohif.example.org']
    """
    origins = []
    for entry in configured or []:
        text = str(entry).strip().rstrip("/")
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
            raise ValueError(f"CORS origin {entry!r}: must be http(s)://host[:port], e.g. https://ohif.example.org")
        origins.append(text)
    return origins


def restrict_cors(fastapi_app, conf_origins: str = "") -> list[str]:
    """Replace the CORS middleware of the running server's stack by one for
    :func:`allowed_origins` of ``MONAI_LABEL_CORS_ORIGINS`` and ``conf_origins``.

    Args:
        fastapi_app: the server's FastAPI application (``monailabel.app.app``).
        conf_origins: comma-separated origins (the app's conf ``cors_origins``).

    Returns:
        the origins allowed.

    Raises:
        ValueError: an origin that is not ``http(s)://host[:port]``.
        RuntimeError: the server's middleware stack is not built yet or has no CORS layer.
    """
    from monailabel.config import settings
    from starlette.middleware.cors import CORSMiddleware

    origins = allowed_origins([*settings.MONAI_LABEL_CORS_ORIGINS,
                               *(o for o in conf_origins.split(",") if o.strip())])
    parent = fastapi_app.middleware_stack
    while parent is not None and not isinstance(getattr(parent, "app", None), CORSMiddleware):
        parent = getattr(parent, "app", None)
    if parent is None:
        raise RuntimeError("the server has no CORS middleware to restrict (is its middleware stack built?)")
    parent.app = CORSMiddleware(parent.app.app, allow_origins=origins, allow_credentials=True,
                                allow_methods=["*"], allow_headers=["*"])
    logger.info("cross-origin requests allowed from: %s", ", ".join(origins) or "no other origin")
    return origins
