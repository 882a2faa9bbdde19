"""Summaries of repeated timings and peak memory of work run in a fresh process.

Peak memory is the peak resident set size (RSS) of a process: every allocation, torch's native
buffers included, which ``tracemalloc`` (Python objects only) would miss. On Linux it is read
from ``VmHWM`` in ``/proc/self/status``, the high-water mark of the process's current address
space, and not from ``getrusage().ru_maxrss``: that one is copied from the parent at ``fork``
and survives ``exec``, so a child started by a big parent would report the parent's peak.
A high-water mark covers the whole life of a process, so each measured variant runs in a new
interpreter of its own (:func:`run_in_fresh_process`).
"""

from __future__ import annotations

import pickle
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["summarize", "peak_rss_mib", "run_in_fresh_process"]


def summarize(seconds: Sequence[float]) -> dict[str, Any]:
    """Median, 95th percentile, min, max and count of a list of durations (seconds).

    Raises:
        ValueError: the list is empty.

    Example:
        >>> summarize([1.0, 3.0, 2.0])["median"]
        2.0
    """
    if len(seconds) == 0:
        raise ValueError("summarize needs at least one timing")
    arr = np.asarray(seconds, dtype=np.float64)
    return {
        "median": float(np.median(arr)),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
        "runs": [round(float(v), 4) for v in arr],
    }


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB: ``VmHWM`` on Linux, else
    ``ru_maxrss`` (KiB on most systems, bytes on macOS)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)`` in a new Python interpreter and return its result.

    ``fn`` must be importable from the installed project (a module-level function) and its
    arguments and result picklable.

    Raises:
        RuntimeError: the child failed (its stderr's end is in the message).
    """
    with tempfile.TemporaryDirectory(prefix="unimed-bench-") as tmp:
        request, answer = Path(tmp) / "call.pkl", Path(tmp) / "result.pkl"
        request.write_bytes(pickle.dumps((fn, args)))
        proc = subprocess.run([sys.executable, "-m", __name__, str(request), str(answer)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed in a fresh process:\n{proc.stderr[-3000:]}")
        return pickle.loads(answer.read_bytes())


def _child(request: str, answer: str) -> None:
    fn, args = pickle.loads(Path(request).read_bytes())
    Path(answer).write_bytes(pickle.dumps(fn(*args)))


if __name__ == "__main__":
    _child(*sys.argv[1:3])
