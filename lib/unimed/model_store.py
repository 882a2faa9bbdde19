"""Numbered model versions and the one published file the server reads.

Layout of a model folder::

    unimed.pt            the published checkpoint (what infer serves)
    versions/v0002.pt    every version a training run produced, numbered
    versions/v0002.json  its meta (when, on what, figures)

Publishing writes the version file first, then replaces ``unimed.pt`` by an atomic rename, so
a crash at any point leaves the previous published model intact and readable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from unimed.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from unimed.networks.unimednet import UniMed

__all__ = ["ModelStore", "ModelVersion", "TAUGHT_KEY", "write_json_atomic"]

#: the meta key of the labels taught after pretraining: ``{name: {"cases": [image names], ...}}``,
#: carried from version to version
TAUGHT_KEY = "taught_labels"

_VERSION = re.compile(r"^v(\d{4,})\.pt$")


@dataclass(frozen=True)
class ModelVersion:
    number: int
    path: Path
    meta: dict[str, Any]


class ModelStore:
    """The versions of one model folder.

    Args:
        folder: the model folder (created when needed).
        published_name: file name of the published checkpoint.

    Example:
        >>> from unimed.networks.unimednet import unimed_tiny
        >>> store = ModelStore(tempfile.mkdtemp())
        >>> store.publish(unimed_tiny(), {"note": "first"}).number
        1
        >>> store.current_version()
        1
    """

    def __init__(self, folder: str | Path, published_name: str = "unimed.pt"):
        self.folder = Path(folder)
        self.published = self.folder / published_name
        self.versions_dir = self.folder / "versions"

    def versions(self) -> list[ModelVersion]:
        """Every stored version, oldest first."""
        out = []
        if self.versions_dir.is_dir():
            for p in sorted(self.versions_dir.iterdir()):
                m = _VERSION.match(p.name)
                if m:
                    meta_file = p.with_suffix(".json")
                    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
                    out.append(ModelVersion(int(m.group(1)), p, meta))
        return sorted(out, key=lambda v: v.number)

    def current_version(self) -> int | None:
        """The version number inside the published file, None if nothing is published."""
        if not self.published.exists():
            return None
        try:
            return load_checkpoint(self.published)[1].get("version")
        except CheckpointError:
            return None

    def next_number(self) -> int:
        numbers = [v.number for v in self.versions()] + [self.current_version() or 0]
        return max(numbers) + 1

    def publish(self, model: UniMed, meta: dict[str, Any]) -> ModelVersion:
        """Store ``model`` as the next version and make it the published one."""
        number = self.next_number()
        meta = {**meta, "version": number, "trained_at": meta.get("trained_at") or _now()}
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        path = save_checkpoint(model, self.versions_dir / f"v{number:04d}.pt", meta)
        write_json_atomic(path.with_suffix(".json"), meta)
        self._replace_published(path)
        return ModelVersion(number, path, meta)

    def keep_published(self) -> ModelVersion | None:
        """Store the published checkpoint as its own version if it is not stored yet (a file
        published by hand or shipped), so that a later rollback can return to it.

        Returns:
            the stored version, or None when nothing readable with a version number is published.
        """
        try:
            _, meta = load_checkpoint(self.published)
        except CheckpointError:
            return None
        number = meta.get("version")
        if not isinstance(number, int) or number < 1:
            return None
        for v in self.versions():
            if v.number == number:
                return v
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        path = self.versions_dir / f"v{number:04d}.pt"
        shutil.copyfile(self.published, path)
        write_json_atomic(path.with_suffix(".json"), meta)
        return ModelVersion(number, path, meta)

    def rollback(self, number: int) -> ModelVersion:
        """Publish an earlier version again (the file is checked before it is published).

        Raises:
            ValueError: no such version, or its file is not a readable checkpoint.
        """
        for v in self.versions():
            if v.number == number:
                load_checkpoint(v.path)
                self._replace_published(v.path)
                return v
        known = ", ".join(str(v.number) for v in self.versions()) or "none"
        raise ValueError(f"no model version {number}; stored versions: {known}")

    def _replace_published(self, source: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.published.name + ".", suffix=".tmp", dir=self.folder)
        os.close(fd)
        try:
            shutil.copyfile(source, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.published)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file renamed over it, so a reader
    never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
