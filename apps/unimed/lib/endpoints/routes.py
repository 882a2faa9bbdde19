"""What the app's routes in front of MONAI Label's share: putting a route first in line, and
reading a form field of JSON parameters."""

from __future__ import annotations

import json
from typing import Any, Callable

from fastapi import HTTPException

__all__ = ["add_route_first", "parse_params"]


def add_route_first(fastapi_app, path: str, endpoint: Callable, methods: list[str]) -> bool:
    """Add ``endpoint`` for ``path`` and ``methods`` so that it is matched before any route the
    server already has (FastAPI matches routes in order); once per endpoint function.

    Returns:
        False when a route with the same path, methods and endpoint name is already first in line
        (a second app instance in the same process), else True.

    Example:
        >>> from fastapi import FastAPI
        >>> app = FastAPI()
        >>> add_route_first(app, "/x", lambda: 1, ["GET"])
        True
    """
    for route in fastapi_app.router.routes:
        if (getattr(route, "path", None) == path and getattr(route, "methods", None) == set(methods)
                and getattr(getattr(route, "endpoint", None), "__qualname__", None) == endpoint.__qualname__
                and getattr(route.endpoint, "__module__", None) == endpoint.__module__):
            return False
    fastapi_app.add_api_route(path, endpoint, methods=methods, include_in_schema=False)
    fastapi_app.router.routes.insert(0, fastapi_app.router.routes.pop())
    return True


def parse_params(params: str | None, what: str = "params") -> dict[str, Any]:
    """A form field holding a JSON object.

    Raises:
        HTTPException: 400 when it is not JSON or not an object.

    Example:
        >>> parse_params('{"a": 1}'), parse_params("")
        ({'a': 1}, {})
    """
    if not params:
        return {}
    try:
        value = json.loads(params)
    except json.JSONDecodeError as exc:
        raise HTTPException(400, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HTTPException(400, f"{what} must be a JSON object, got {type(value).__name__}")
    return value
