"""The parameters of one fine-tuning run on the datastore, as ``POST /train/unimed`` sends them.

One parser serves both ends of a request: the server checks the body before it queues the run
(a bad value answers 422 at once), and the train task reads the same parameters when the run
starts (where MONAI Label has merged in keys of its own, such as ``model``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from trainers.ssl import SSL_LOSSES

__all__ = ["CLIENT_KEYS", "TrainRequest", "TrainRequestError"]

#: keys MONAI Label's clients add to every request (``MONAILabelClient``, 3D Slicer's plugin);
#: not parameters, but not mistakes either
CLIENT_KEYS = ("client_id", "model")


class TrainRequestError(ValueError):
    """A train request's parameter is unknown, of the wrong type or out of range; the message
    names it."""


def _number(name: str, value: Any, kind: type) -> int | float:
    """``value`` as ``kind`` (int or float); numbers and numeric strings pass, booleans do not."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TrainRequestError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise TrainRequestError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise TrainRequestError(f"{name} must be finite, got {value!r}")
    if kind is int:
        if number != int(number):
            raise TrainRequestError(f"{name} must be a whole number, got {value!r}")
        return int(number)
    return number


@dataclass(frozen=True)
class TrainRequest:
    """What a datastore fine-tuning run is asked for.

    Attributes:
        max_epochs: passes over the labelled images (>= 1).
        lr: the learning rate (> 0).
        max_minutes: the wall-clock budget (> 0).
        seed: seeds the run (>= 0).
        ssl_loss: the unsupervised loss on the unlabelled images, one of
            :data:`trainers.ssl.SSL_LOSSES`.
        teach_steps: fine-tuning steps per new label when the run teaches new labels
            (:func:`trainers.teach.teach_samples`; ``max_minutes`` bounds the whole run); 0: the
            new token's start only, every old output stays bit-identical.
        token_steps: steps that start a new label's token from its cases (>= 0).

    Example:
        >>> TrainRequest.parse({"max_epochs": "3", "ssl_loss": "consistency"}).max_epochs
        3
        >>> TrainRequest.parse({"epochs": 3}, strict=True)
        Traceback (most recent call last):
        ...
        trainers.train_request.TrainRequestError: unknown train parameter 'epochs'; known: max_epochs, lr, max_minutes, seed, ssl_loss, teach_steps, token_steps
    """

    max_epochs: int = 2
    lr: float = 3e-4
    max_minutes: float = 30.0
    seed: int = 0
    ssl_loss: str = "reconstruction"
    teach_steps: int = 300
    token_steps: int = 30

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise TrainRequestError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if not self.lr > 0:
            raise TrainRequestError(f"lr must be > 0, got {self.lr}")
        if not self.max_minutes > 0:
            raise TrainRequestError(f"max_minutes must be > 0, got {self.max_minutes}")
        if self.seed < 0:
            raise TrainRequestError(f"seed must be >= 0, got {self.seed}")
        if self.teach_steps < 0 or self.token_steps < 0:
            raise TrainRequestError(f"teach_steps and token_steps must be >= 0, got {self.teach_steps} and "
                                    f"{self.token_steps}")
        if self.ssl_loss not in SSL_LOSSES:
            raise TrainRequestError(f"ssl_loss must be one of {', '.join(SSL_LOSSES)}, got {self.ssl_loss!r}")

    @classmethod
    def parse(cls, params: Mapping[str, Any] | None, *, strict: bool = False) -> "TrainRequest":
        """The request of ``params``, missing keys at their defaults.

        Args:
            params: the request body (a flat JSON object).
            strict: refuse keys that are neither parameters nor :data:`CLIENT_KEYS` (the
                server, on the user's body); the train task reads leniently, because MONAI
                Label merges keys of its own into the request.

        Raises:
            TrainRequestError: a body that is not an object, an unknown key (when ``strict``),
                a value of the wrong type or out of range.
        """
        params = {} if params is None else params
        if not isinstance(params, Mapping):
            raise TrainRequestError(f"the train request body must be a JSON object, got {type(params).__name__}")
        known = [f.name for f in fields(cls)]
        if strict:
            for key, value in params.items():
                if key in known or key in CLIENT_KEYS:
                    continue
                if isinstance(value, Mapping):
                    raise TrainRequestError(f"train parameter {key!r} holds an object; the body is flat, e.g. "
                                            '{"max_epochs": 1, "ssl_loss": "consistency"}')
                raise TrainRequestError(f"unknown train parameter {key!r}; known: {', '.join(known)}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in params:
                continue
            value = params[f.name]
            if f.type in ("int", "float"):
                values[f.name] = _number(f.name, value, int if f.type == "int" else float)
            elif not isinstance(value, str):
                raise TrainRequestError(f"{f.name} must be a string, got {value!r}")
            else:
                values[f.name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
