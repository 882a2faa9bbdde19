"""Retraining triggered by saved labels: when enough new final labels have arrived since the
served version read the datastore, a short fine-tuning run starts, unless one is running."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.utils.async_tasks.utils import tasks

__all__ = ["AutoRetrain", "labels_since", "training_active"]


def _epoch(service_info: dict[str, Any]) -> float:
    """Seconds since the epoch up to which the served version saw the datastore's labels: its
    ``labels_until``, else when it was trained, else 0 (every label is new)."""
    if service_info.get("labels_until") is not None:
        return float(service_info["labels_until"])
    if service_info.get("trained_at"):
        try:
            return datetime.fromisoformat(str(service_info["trained_at"])).timestamp()
        except ValueError:
            return 0.0
    return 0.0


def labels_since(datastore: Datastore, service_info: dict[str, Any]) -> list[str]:
    """Images whose final label was saved after the served version read the datastore."""
    since = int(_epoch(service_info))
    out = []
    for image_id in datastore.get_labeled_images(DefaultLabelTag.FINAL.value):
        info = datastore.get_label_info(image_id, DefaultLabelTag.FINAL.value)
        if int(info.get("ts", 0)) >= since:
            out.append(image_id)
    return sorted(out)


def training_active() -> bool:
    """Whether a training task of this server is queued or running."""
    return any(t.get("status") in ("SUBMITTED", "RUNNING") for t in tasks("train"))


@dataclass(frozen=True, kw_only=True)
class AutoRetrain:
    """When and how long a label-triggered fine-tuning runs.

    Attributes:
        after_labels: new final labels that start a run (0: never start one).
        max_epochs: passes over the labelled images.
        max_minutes: wall-clock budget of the run.

    Example:
        >>> AutoRetrain.from_conf({"auto_train_labels": "3"}).after_labels
        3
    """

    after_labels: int = 1
    max_epochs: int = 1
    max_minutes: float = 10.0

    def __post_init__(self) -> None:
        if self.after_labels < 0 or self.max_epochs < 1 or not self.max_minutes > 0:
            raise ValueError(f"auto_train_labels must be >= 0, auto_train_epochs >= 1 and auto_train_minutes > 0, got "
                             f"{self.after_labels}, {self.max_epochs} and {self.max_minutes}")

    @classmethod
    def from_conf(cls, conf: dict[str, str]) -> "AutoRetrain":
        """From the app's ``--conf`` keys ``auto_train_labels``, ``auto_train_epochs``, ``auto_train_minutes``."""
        try:
            return cls(after_labels=int(conf.get("auto_train_labels", 1)), max_epochs=int(conf.get("auto_train_epochs", 1)),
                       max_minutes=float(conf.get("auto_train_minutes", 10)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad auto-training conf: {exc}") from exc

    def params(self) -> dict[str, Any]:
        """The train request of one run."""
        return {"max_epochs": self.max_epochs, "max_minutes": self.max_minutes}
