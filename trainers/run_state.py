"""What a training run needs to continue where it stopped: random states, the saved file, signals.

:meth:`trainers.joint.JointTrainer.state_dict` gathers the state; this module holds the pieces
around it: the process-wide random states, the comparison of a saved run's configuration with
this one's, an atomic save and a ``map_location="cpu"`` load (a state saved on a GPU continues
on the CPU and the other way round), and :func:`deferred_interrupts`, under which Ctrl-C or
SIGTERM stops training after the step in progress, so the state saved on the way out is whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["STATE_FORMAT", "RESUMABLE_CHANGES", "global_rng_state", "set_global_rng_state", "comparable_config",
           "config_differences", "check_same_run", "rank_state_path", "save_state", "load_state", "Interrupts",
           "deferred_interrupts", "TrainingInterrupted"]

#: the version of the state's layout; a state of another layout is refused
STATE_FORMAT = 1

#: configuration fields a resumed run may change: none of them alters the steps it takes
RESUMABLE_CHANGES = frozenset({"max_minutes", "log_every", "checkpoint_minutes"})


def global_rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's process-wide random states (and CUDA's, where torch sees a
    GPU), as tensors and plain values that ``torch.load(weights_only=True)`` reads back."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)), "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`global_rng_state`; CUDA's only where this machine has as many GPUs."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
                         "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def comparable_config(config: Any) -> dict[str, Any]:
    """A config's ``to_dict()`` as JSON sees it (tuples as lists), so a saved copy compares equal."""
    return json.loads(json.dumps(config.to_dict(), default=str))


_ABSENT = object()


def _shown(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def config_differences(saved: dict[str, Any], now: dict[str, Any], prefix: str = "",
                       defaults: dict[str, Any] | None = None) -> list[str]:
    """``"key: saved A, now B"`` for every field (dotted path) that differs, except the fields of
    :data:`RESUMABLE_CHANGES` and, where ``defaults`` (a default config's dict) is given, a field
    the saved config lacks that ``now`` holds at its default (one added to the recipe after the
    run was saved, which that run trained with in effect).

    Example:
        >>> config_differences({"steps": 10, "max_minutes": 5}, {"steps": 20, "max_minutes": 9})
        ['steps: saved 10, now 20']
        >>> config_differences({"loss": {"cls": 1.0}}, {"loss": {"cls": 1.0, "new": 0.5}}, defaults={"loss": {"new": 0.5}})
        []
    """
    out = []
    for key in sorted(set(saved) | set(now)):
        path = f"{prefix}{key}"
        if not prefix and key in RESUMABLE_CHANGES:
            continue
        a, b = saved.get(key, _ABSENT), now.get(key, _ABSENT)
        default = (defaults or {}).get(key, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{path}.", default if isinstance(default, dict) else None)
        elif a is _ABSENT and b is not _ABSENT and b == default:
            continue
        elif a != b:
            out.append(f"{path}: saved {_shown(a)}, now {_shown(b)}")
    return out


def check_same_run(state: dict[str, Any], config: Any) -> None:
    """Raise ``ValueError`` naming every difference (:func:`config_differences`) between the
    config ``state`` was saved with and ``config``."""
    differences = config_differences(state["config"], comparable_config(config),
                                     defaults=comparable_config(type(config)()))
    if differences:
        raise ValueError("the saved run has another config: " + "; ".join(differences)
                         + " (a resumed run may change only max_minutes)")


def rank_state_path(path: Path, rank: int) -> Path:
    """Where process ``rank`` of a torchrun run keeps its state (each rank draws its own batches):
    ``path`` itself for rank 0, ``NAME.rankN.pt`` beside it for the others."""
    return path if rank == 0 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def save_state(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file beside it, synced, then renamed
    over it, so a crash while saving leaves the previous state whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_state(path: Path) -> dict[str, Any]:
    """A state written by :func:`save_state`, its tensors on the CPU (the trainer moves them).

    Raises:
        FileNotFoundError: there is no state at ``path``.
        ValueError: the file is not a training state of this layout.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no training state to resume at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (unpickling, zip, key errors) for a file it cannot read
        raise ValueError(f"{path}: not a readable training state ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not a training state of format {STATE_FORMAT} (found {found!r})")
    return state


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after its state was saved.

    Attributes:
        signum: the signal.
        step: the last step taken.
        path: where the state was saved.
    """

    def __init__(self, signum: int, step: int, path: Path):
        super().__init__(f"training stopped by {signal.Signals(signum).name} at step {step}; its state is in {path}")
        self.signum, self.step, self.path = signum, step, path


class Interrupts:
    """The signal noted by :func:`deferred_interrupts` (``signum``: None while none came)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def note(self, signum: int, frame: Any) -> None:
        """The first SIGINT or SIGTERM is noted; another one interrupts at once."""
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[Interrupts]:
    """Within the block, the first SIGINT or SIGTERM is only noted on the yielded
    :class:`Interrupts` (training checks it after each step), a second one raises
    ``KeyboardInterrupt`` at once; the previous handlers come back on exit. Outside the main
    thread signals cannot be caught, and nothing changes.

    Example:
        >>> with deferred_interrupts() as interrupts:
        ...     interrupts.requested
        False
    """
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    previous = {sig: signal.signal(sig, interrupts.note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupts
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
