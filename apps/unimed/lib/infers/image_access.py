"""Which files an infer request may read: images of the datastore, the file sent with the request,
and server paths only where the app's conf allows them.

MONAI Label's infer endpoint takes ``?image=`` as a datastore id or, when a file of that name
exists, as a path on the server, and lets ``params`` override it; uploads go to the system
temporary folder, readable by everyone, and stay there when the request fails. Here an upload is
written to a private folder of the app (0700, files 0600) and removed when the request ends; a
path is read only when it is that upload, or lies under a root named in conf
``infer_path_roots`` (off by default); anything else must be an id the datastore knows, and a
missing file and an unreadable one get the same answer.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO, Iterable

__all__ = ["PrivateUploads", "ServerPathPolicy", "REQUEST_KEYS"]

#: request keys the endpoint sets itself: ``params`` may not override them
REQUEST_KEYS = ("image", "model", "session", "label")


class PrivateUploads:
    """A private folder for the images sent with infer requests.

    Args:
        folder: the folder; made (0700) if absent, and emptied of earlier runs' leftovers.

    Example:
        >>> import io, tempfile
        >>> uploads = PrivateUploads(Path(tempfile.mkdtemp()) / "uploads")
        >>> path = uploads.save(io.BytesIO(b"image bytes"), "scan.nii.gz")
        >>> uploads.owns(str(path)), oct(path.stat().st_mode & 0o777), path.name.endswith(".nii.gz")
        (True, '0o600', True)
        >>> uploads.remove(path); uploads.owns(str(path))
        False
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        for leftover in self.folder.iterdir():  # a server killed mid-request leaves its upload
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def save(self, stream: BinaryIO, filename: str | None) -> Path:
        """Copy an upload into a new private file that keeps the name's suffixes (``.nii.gz``)."""
        suffix = "".join(Path(filename or "image.nii.gz").suffixes)[-16:] or ".nii.gz"
        path = self.folder / f"{secrets.token_hex(16)}{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(stream, out)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def owns(self, path: str) -> bool:
        """Whether ``path`` is an upload of this folder that is still there."""
        candidate = Path(path)
        return candidate.is_absolute() and candidate.parent == self.folder and candidate.is_file()

    def remove(self, path: Path) -> None:
        Path(path).unlink(missing_ok=True)


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
