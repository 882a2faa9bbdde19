"""Crash-safe file writes for the datastore: a file is either its old or its new content.

A new content goes to a private temporary file ``.part-*`` in the destination's own folder,
is flushed and fsynced, then renamed over the destination with ``os.replace`` (atomic on
POSIX), and the folder is fsynced. A ``kill -9`` at any moment leaves the old file whole and
at worst a ``.part-*`` file, which :func:`remove_leftovers` deletes at the next start.
Temporary names carry the writer's process id, so that a process starting next to a
running server (MONAI Label's training and scoring processes build the datastore too)
removes only what dead processes left. The name never matches an image pattern (``*.nii.gz``...) nor a file the readers take (they skip
names starting with ``.``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["PART_PREFIX", "UPLOADS_DIR", "UPLOAD_PREFIX", "temp_prefix", "write_atomically", "fsync_dir", "private_upload",
           "remove_leftovers"]

logger = logging.getLogger(__name__)

#: prefix of the temporary files of an atomic write
PART_PREFIX = ".part-"
#: the datastore's private folder (0700) for uploads in flight
UPLOADS_DIR = ".uploads"
#: prefix of an upload in flight in :data:`UPLOADS_DIR`
UPLOAD_PREFIX = "upload-"


def temp_prefix(kind: str = PART_PREFIX) -> str:
    """``kind`` followed by this process's id, the start of every temporary name it makes."""
    return f"{kind}{os.getpid()}-"


def _writer_alive(name: str, kind: str) -> bool:
    """Whether the process named in a temporary file's name still runs (another one than us)."""
    pid = name[len(kind):].split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or unlink in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(dest: str | Path, source: bytes | str | Path | BinaryIO) -> None:
    """Replace ``dest`` with ``source`` (bytes, a file path or a binary stream), all or nothing.

    The new file is private (mode 0600). A final symlink at ``dest`` is replaced, never followed.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> write_atomically(d / "a.json", b"{}"); (d / "a.json").read_bytes()
        b'{}'
    """
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=temp_prefix())
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, bytes):
                out.write(source)
            elif isinstance(source, (str, Path)):
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, out)
            else:
                shutil.copyfileobj(source, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)


@contextlib.contextmanager
def private_upload(root: str | Path, stream: BinaryIO, suffix: str) -> Iterator[Path]:
    """An uploaded stream as a private file (0600) in ``root/.uploads`` (0700); removed on exit,
    whether the block succeeds or raises.

    Example:
        >>> import io, tempfile
        >>> with private_upload(tempfile.mkdtemp(), io.BytesIO(b"x"), ".png") as path:
        ...     oct(path.stat().st_mode & 0o777), path.read_bytes()
        ('0o600', b'x')
    """
    folder = Path(root) / UPLOADS_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=temp_prefix(UPLOAD_PREFIX), suffix=suffix)
    path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream, out)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_leftovers(root: str | Path, folders: list[Path]) -> list[Path]:
    """Delete what an interrupted write or upload of a process no longer running left:
    ``root/.uploads/upload-*`` and ``.part-*`` files directly in ``folders``. Returns the
    deleted paths.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); (d / ".part-x").write_text("")
        0
        >>> [p.name for p in remove_leftovers(d, [d])]
        ['.part-x']
    """
    uploads = Path(root) / UPLOADS_DIR
    candidates = [(p, UPLOAD_PREFIX) for p in uploads.iterdir()] if uploads.is_dir() else []
    for folder in folders:
        if folder.is_dir():
            candidates += [(p, PART_PREFIX) for p in folder.iterdir() if p.name.startswith(PART_PREFIX)]
    removed = []
    for path, kind in candidates:
        if path.is_file() and not path.is_symlink() and not _writer_alive(path.name, kind):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.warning("removed %d temporary file(s) left by an interrupted write or upload", len(removed))
    return removed
