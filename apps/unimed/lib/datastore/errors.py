"""The error the app's datastore raises for a request it refuses."""

from __future__ import annotations

from fastapi import HTTPException

__all__ = ["DatastoreRequestError"]


class DatastoreRequestError(HTTPException, ValueError):
    """A datastore request refused with an HTTP 4xx and a message naming the problem.

    MONAI Label's datastore endpoints call the datastore directly and turn any other exception
    into a 500; an ``HTTPException`` raised from the datastore reaches the client as its status
    and message. Outside a server it is a ``ValueError``.

    Args:
        status_code: 400 (a bad id, tag or parameter), 404 (no such image or label), 415 (a
            file type the datastore does not take), 422 (a file that cannot be used).
        message: what is wrong; it names no server path.

    Example:
        >>> err = DatastoreRequestError(404, "no image 'x' in the datastore")
        >>> err.status_code, str(err), isinstance(err, ValueError)
        (404, "no image 'x' in the datastore", True)
    """

    def __init__(self, status_code: int, message: str):
        if not 400 <= status_code < 500:
            raise ValueError(f"a refused request answers a 4xx status, got {status_code}")
        super().__init__(status_code=status_code, detail=message)

    def __str__(self) -> str:
        return str(self.detail)
