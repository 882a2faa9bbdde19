"""Helpers for the long-running child processes the project starts (MONAI Label, Orthanc).

Example:
    >>> import subprocess, sys
    >>> proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    >>> wait_until_ready(lambda: True, proc, timeout=5)
    True
    >>> terminate(proc)
    >>> proc.poll() is not None
    True
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Callable, Mapping, Sequence

__all__ = ["wait_until_ready", "terminate", "run_in_foreground"]


def wait_until_ready(probe: Callable[[], object], proc: subprocess.Popen, timeout: float,
                     interval: float = 0.5) -> bool:
    """Call ``probe`` until it stops raising ``OSError``.

    Returns:
        True once ``probe`` succeeded; False when ``proc`` exited or ``timeout`` seconds passed.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    deadline = time.time() + timeout
    while True:
        try:
            probe()
            return True
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                return False
            time.sleep(interval)


def terminate(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM ``proc``, then SIGKILL it if it has not exited after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_in_foreground(cmd: Sequence[str], env: Mapping[str, str] | None = None, grace: float = 20.0) -> int:
    """Run ``cmd`` in its own process group until it exits; SIGTERM or SIGINT to this process
    stops the whole group (the command and every process it started): SIGTERM first, SIGKILL
    after ``grace`` seconds.

    Returns:
        the command's exit status (negative: the signal that ended it).

    Example:
        >>> import sys
        >>> run_in_foreground([sys.executable, "-c", "raise SystemExit(3)"])
        3
    """
    if grace <= 0:
        raise ValueError(f"grace must be positive, got {grace}")
    stopping: list[int] = []
    started: list[subprocess.Popen] = []

    def forward(signum, frame) -> None:
        stopping.append(signum)
        if started:
            _signal_group(started[0], signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        proc = subprocess.Popen(list(cmd), env=None if env is None else dict(env), start_new_session=True)
        started.append(proc)
        if stopping:  # a signal came while it started
            _signal_group(proc, signal.SIGTERM)
        deadline = None
        while proc.poll() is None:
            if stopping and deadline is None:
                deadline = time.monotonic() + grace
            if deadline is not None and time.monotonic() > deadline:
                _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        code = proc.returncode
        if stopping:  # children the command left behind
            _signal_group(proc, signal.SIGKILL)
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if started and proc.poll() is None:  # an exception on the way out: leave nothing running
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass
