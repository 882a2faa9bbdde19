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

import subprocess
import time
from typing import Callable

__all__ = ["wait_until_ready", "terminate"]


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
