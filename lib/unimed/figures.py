"""Writing matplotlib figures (the plots of al-sim and clicks-eval)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["save_figure"]


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay ``fig`` out tightly, write it to ``path`` (its folder made first) and close it.

    Example:
        >>> import matplotlib; matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt, tempfile
        >>> fig, ax = plt.subplots()
        >>> save_figure(fig, Path(tempfile.mkdtemp()) / "plots" / "a.png").name
        'a.png'
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
