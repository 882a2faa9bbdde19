"""Which files an infer request may read: images of the datastore, the file sent with the request,
and server paths only where the app's conf allows them.

MONAI Label's infer endpoint takes ``?image=`` as a datastore id or, when a file of that name
exists, as a path on the server, and lets ``params`` override it; uploads go to the system
temporary folder, readable by everyone, and stay there when the request fails. Here an upload is
written to a private folder of the app (0700, files 0600, as the datastore keeps its uploads)
and removed when the request ends; a
path is read only when it is that upload, or lies under a root named in conf
``infer_path_roots`` (off by default); anything else must be an id the datastore knows, and a
missing file and an unreadable one get the same answer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, ContextManager, Iterable

from lib.datastore.files import UPLOADS_DIR, private_upload, remove_leftovers

__all__ = ["PrivateUploads", "ServerPathPolicy", "REQUEST_KEYS"]

#: request keys the endpoint sets itself: ``params`` may not override them
REQUEST_KEYS = ("image", "model", "session", "label")


class PrivateUploads:
    """The images sent with infer requests, as private files of the app folder: the datastore's
    uploads mechanism (:func:`lib.datastore.files.private_upload`, in ``root/.uploads``, 0700,
    files 0600, removed when the request ends), with the leftovers of server processes that
    died mid-request removed at start (:func:`lib.datastore.files.remove_leftovers`).

    Args:
        root: the app folder.

    Example:
        >>> import io, tempfile
        >>> uploads = PrivateUploads(tempfile.mkdtemp())
        >>> with uploads.receive(io.BytesIO(b"image bytes"), "scan.nii.gz") as path:
        ...     uploads.owns(str(path)), oct(path.stat().st_mode & 0o777), path.name.endswith(".nii.gz")
        (True, '0o600', True)
        >>> uploads.owns(str(path))
        False
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.folder = self.root / UPLOADS_DIR
        remove_leftovers(self.root, [])

    def receive(self, stream: BinaryIO, filename: str | None) -> ContextManager[Path]:
        """The upload as a private file that keeps the name's suffixes (``.nii.gz``, for the
        loader), for the duration of the ``with`` block."""
        suffix = "".join(Path(filename or "image.nii.gz").suffixes)[-16:] or ".nii.gz"
        return private_upload(self.root, stream, suffix)

    def owns(self, path: str) -> bool:
        """Whether ``path`` is an upload of this folder that is still there."""
        candidate = Path(path)
        return candidate.is_absolute() and candidate.parent == self.folder and candidate.is_file()


class ServerPathPolicy:
    """Server paths an infer request may name, from conf ``infer_path_roots`` (comma-separated
    absolute folders; empty: none).

    Raises:
        ValueError: a root that is not an absolute path.

    Example:
        >>> ServerPathPolicy.from_conf("").allows("/etc/hostname")
        False
    """

    def __init__(self, roots: Iterable[str | Path] = ()):
        self.roots = []
        for root in roots:
            if not os.path.isabs(str(root)):
                raise ValueError(f"infer_path_roots must be absolute folders, got {str(root)!r}")
            self.roots.append(Path(root).resolve())

    @classmethod
    def from_conf(cls, value: str) -> "ServerPathPolicy":
        return cls(r.strip() for r in (value or "").split(",") if r.strip())

    def allows(self, path: str) -> bool:
        """Whether ``path`` is an existing file or folder under one of the roots (links resolved)."""
        if not self.roots or not os.path.isabs(path):
            return False
        real = Path(path).resolve()
        return real.exists() and any(real == root or root in real.parents for root in self.roots)
