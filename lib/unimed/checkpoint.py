"""Reading and writing UniMed checkpoints.

A checkpoint is one ``torch.save`` file holding the network's config, its weights (float16 to
keep the file small), and a ``meta`` dict (version, when and on what it was trained). Files
are written to a temporary name and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from unimed.networks.unimednet import UniMed, UniMedConfig

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "FORMAT"]

FORMAT = "unimed-checkpoint/1"


class CheckpointError(ValueError):
    """A file that is not a readable UniMed checkpoint."""


def save_checkpoint(model: UniMed, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file, fsync, rename).

    Example:
        >>> from unimed.networks.unimednet import unimed_tiny
        >>> p = save_checkpoint(unimed_tiny(), Path(tempfile.mkdtemp()) / "m.pt", {"version": 1})
        >>> load_checkpoint(p)[1]["version"]
        1
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "config": model.config.to_dict(), "state_dict": state, "meta": dict(meta or {})}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is read by the server's user too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[UniMed, dict[str, Any]]:
    """Build the network a checkpoint describes and load its weights.

    Returns:
        ``(model, meta)`` with the model in eval mode, float32, on ``device``.

    Raises:
        CheckpointError: the file is missing, unreadable, or not a UniMed checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file raises many types
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a UniMed checkpoint (expected format {FORMAT!r})")
    model = UniMed(UniMedConfig.from_dict(payload["config"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match the network it describes: {exc}") from exc
    return model.to(device).eval(), dict(payload.get("meta", {}))
