"""The benchmark's results file (JSON), its Markdown tables and its plot (PNG).

One results file holds every section run so far (``machine``, ``speed``, ``server``,
``training``, ``accuracy``); a later run replaces the sections it ran and keeps the others, and
the accuracy section is kept per dataset, so the long accuracy benchmark can be resumed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["load_results", "merge_results", "write_json", "to_markdown", "plot"]

SECTIONS = ("machine", "speed", "server", "training", "accuracy")


def load_results(path: str | Path | None) -> dict[str, Any]:
    """The results file at ``path``, or an empty dict when there is none.

    Raises:
        ValueError: the file is not a JSON object.
    """
    if path is None or not Path(path).exists():
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); move it away or pick another --json") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def merge_results(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with ``new``'s sections replacing its own; accuracy entries merge per dataset.

    Example:
        >>> merge_results({"accuracy": {"voc": 1}, "speed": 1}, {"accuracy": {"brats": 2}})
        {'accuracy': {'voc': 1, 'brats': 2}, 'speed': 1}
    """
    out = dict(old)
    for key, value in new.items():
        if key == "accuracy" and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def write_json(results: dict[str, Any], path: str | Path) -> None:
    """Write ``results`` atomically (a temporary file renamed over ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=float))
    tmp.replace(path)


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _machine(m: dict[str, Any]) -> list[str]:
    return [
        f"Machine: {m.get('cpu_model')}, {m.get('cpus_usable')} usable of {m.get('cpus_logical')} logical CPUs, "
        f"torch {m.get('torch')} with {m.get('torch_threads')} threads, MONAI {m.get('monai')}, "
        f"Python {m.get('python')}; load average at the last section's end {m.get('load_average')}.",
    ]


def _speed(s: dict[str, Any]) -> list[str]:
    lines = [
        f"One volume `{Path(s['image']).name}` (shape {s['image_shape']}), {s['repeats']} timed runs per variant "
        f"(alternating, after a warm-up), {s['threads']} torch threads; time from the file to the answer in the "
        "image's grid. Peak RSS: each variant once in a fresh process.",
        "",
    ]
    rows = []
    for name, v in s["variants"].items():
        rss = v.get("peak_rss_mib") or {}
        rows.append([f"`{name}`", _num(v["seconds"]["median"]), _num(v["seconds"]["min"]), _num(v["seconds"]["max"]),
                     _num(v.get("ratio_to_segresnet"), 3), _num(rss.get("peak_mib"), 0)])
    lines += _table(["variant", "median s", "min s", "max s", "x SegResNet", "peak RSS MiB"], rows)
    all_tasks = s["variants"].get("unimed_all_tasks")
    if all_tasks:
        st = all_tasks["stages"]
        parts = [f"{k} {st[k]:.2f} s" for k in ("load", "segmentation", "detection", "classification") if k in st]
        lines += ["", "`unimed_all_tasks` by stage (medians): " + ", ".join(parts) + "."]
    for name, t in (s.get("targets") or {}).items():
        lines.append(f"Target {name}: <= {t['target']}, measured {_num(t['measured'], 3)}: "
                     f"{'met' if t['met'] else 'not met' if t['met'] is not None else 'n/a'}.")
    return lines


def _server(s: dict[str, Any]) -> list[str]:
    lines = [f"Real server on loopback, image `{s['image']}`, requests cycling over {', '.join(s['models'])}.", ""]
    rows = [[str(lvl["clients"]), str(lvl["requests"]), _num(lvl["p50"]), _num(lvl["p95"]), _num(lvl["throughput_rps"]),
             _num(lvl["info"]["p95"]) if lvl.get("info") else "-"]
            for lvl in s["levels"]]
    lines += _table(["clients", "requests", "p50 s", "p95 s", "requests/s", "`GET /info` p95 s"], rows)
    cold = s.get("three_tasks_cold")
    if cold:
        lines += ["", f"All three tasks of the volume over HTTP with a cold feature cache: median "
                      f"{_num(cold['seconds']['median'])} s over {cold['seconds']['n']} runs."]
    return lines


def _training(t: dict[str, Any]) -> list[str]:
    lines = [f"{t['patches']} patches of {t['patch_size']}^3 from `{t['data']}`, batch {t['batch_size']}, "
             f"{t['steps']} timed steps after {t['warmup_steps']} warm-up.", ""]
    rows = [[f"`{name}`", _num(v["samples_per_second"], 3), _num(v["step_seconds"]["median"])]
            for name, v in t["models"].items()]
    return lines + _table(["model", "samples/s", "median s/step"], rows)


def _metrics_text(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "n/a"
    return ", ".join(f"{k} {_num(v, 3)}" for k, v in metrics.items() if not isinstance(v, dict))


def _accuracy(a: dict[str, Any]) -> list[str]:
    rows = []
    for name, r in a.items():
        peer = r.get("peer", {})
        rows.append([name, r.get("split", "?"), f"{peer.get('name', '?')}", _num(peer.get("budget_minutes"), 1),
                     _metrics_text((r.get("unimed") or {}).get("metrics")), _metrics_text(peer.get("metrics"))])
    return _table(["dataset", "split", "peer", "peer minutes", "UniMed", "peer"], rows)


def to_markdown(results: dict[str, Any]) -> str:
    """Markdown tables of every section present in ``results``.

    Example:
        >>> print(to_markdown({"machine": {"cpu_model": "x", "torch": "2"}}).splitlines()[0])
        ## Benchmarks
    """
    lines = ["## Benchmarks", ""]
    if "machine" in results:
        lines += _machine(results["machine"]) + [""]
    for key, title, fn in (("speed", "Speed and memory", _speed), ("server", "Server latency", _server),
                           ("training", "Training throughput", _training), ("accuracy", "Accuracy vs single-task peers", _accuracy)):
        if results.get(key):
            lines += [f"### {title}", ""] + fn(results[key]) + [""]
            if results[key].get("load_average_at_start"):
                lines += [f"Load average when this section started: {results[key]['load_average_at_start']}.", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str | Path) -> Path | None:
    """A PNG of the speed medians, the server latency curves and the training throughput
    (the sections present); None when no section has anything to plot."""
    panels = [k for k in ("speed", "server", "training") if results.get(k)]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == "speed":
            names = list(results["speed"]["variants"])
            values = [results["speed"]["variants"][n]["seconds"]["median"] for n in names]
            ax.barh([n.replace("unimed_", "UniMed ") for n in names], values, color="tab:blue")
            ax.set_xscale("log")
            ax.set_xlabel("median seconds per volume (log)")
            ax.set_title("one BraTS volume, CPU")
        elif key == "server":
            levels = results["server"]["levels"]
            clients = [lvl["clients"] for lvl in levels]
            ax.plot(clients, [lvl["p50"] for lvl in levels], "o-", label="p50")
            ax.plot(clients, [lvl["p95"] for lvl in levels], "s--", label="p95")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel("/infer latency (s)")
            ax.set_title("server latency")
            ax.legend()
        else:
            models = results["training"]["models"]
            ax.bar(list(models), [m["samples_per_second"] for m in models.values()], color="tab:green")
            ax.set_ylabel("training samples/s")
            ax.set_title("training throughput, same patches")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
