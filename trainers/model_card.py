"""The model card beside a trained checkpoint: how it was trained, on what, and its figures.

:func:`write_model_card` writes ``model_card.json`` and ``MODEL_CARD.md``; a pretraining run
writes its own (:func:`trainers.pretrain.pretrain`), and ``main.py cv-card`` adds the figures of
``pretrain --hold-out`` runs, mean and sd over runs (:func:`cross_validation_section`), to the card
of the run that is shipped.
"""

from __future__ import annotations

import json
import shlex
import statistics
from pathlib import Path
from typing import Any

__all__ = ["HELD_OUT", "flat_metrics", "cross_validation_summary", "cross_validation_section",
           "format_cross_validation", "write_model_card"]


#: the split every held-out figure of :func:`validate` starts with
HELD_OUT = "held out"

#: how a dataset kind is named in the model card's prose
_DISPLAY = {"brats": "BraTS", "medmnist": "AdrenalMNIST3D", "voc": "BCCD", "msd_patches": "MSD lung patches"}


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric metrics of an evaluation, nested ones flattened as ``name_key`` (VOC's per-class
    ``ap50``); None, booleans, strings and lists are left out.

    Example:
        >>> flat_metrics({"map50": 0.5, "ap50": {"platelet": 0.25}, "note": "x", "auc": None})
        {'map50': 0.5, 'ap50_platelet': 0.25}
    """
    flat: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flat_metrics(value, f"{prefix}{name}_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix + name] = float(value)
    return flat


def _held_out_cases(split: str) -> list[str]:
    """The cases of a ``"held out: a, b"`` split (:func:`validate`); none for another split."""
    if not split.startswith(HELD_OUT):
        return []
    return [c.strip() for c in split.partition(":")[2].split(",") if c.strip()]


def _mean_sd(values: list[float]) -> dict[str, Any]:
    """Mean, sample sd (ddof=1; 0.0 for one value) and the values themselves."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "values": values}


def cross_validation_summary(cards: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per dataset, the mean and sd over runs of the validation figures of ``--hold-out`` runs'
    model cards (one fold each of a cross-validation of the whole recipe).

    The sd is the sample standard deviation over runs (``ddof=1``), 0.0 for a single run. Only
    numeric metrics count; nested ones are flattened by :func:`flat_metrics` (``ap50_platelet``).
    A dataset whose split starts with ``"held out"`` is the cross-validated one: its entry lists
    each run's held-out cases; the other datasets' validation splits were scored by every run.

    Args:
        cards: the runs' model cards (``model_card.json``), each with a ``"validation"`` section.

    Returns:
        dataset -> ``{"runs": runs that scored it, "cases": cases scored over all runs, "split":
        "held out, one case per run" (or "held out, K cases over R runs") or the split's name,
        "held_out": [each run's held-out cases] (empty lists for a dataset not held out),
        "metrics": {metric: {"mean", "sd", "values": [one per run]}}}``.

    Raises:
        ValueError: no cards, a card without validation figures, a card with no held-out
            dataset (not a ``--hold-out`` run), or a case held out by more than one run.

    Example:
        >>> card = lambda case, d: {"validation": {"brats": {"split": f"held out: {case}", "n": 1,
        ...                                                  "metrics": {"dice_wt": d}}}}
        >>> s = cross_validation_summary([card("a", 0.6), card("b", 0.8)])["brats"]
        >>> s["split"], s["cases"], s["held_out"], round(s["metrics"]["dice_wt"]["sd"], 4)
        ('held out, one case per run', 2, [['a'], ['b']], 0.1414)
    """
    if not cards:
        raise ValueError("cross-validation: no run's model card to summarise")
    seen: dict[str, int] = {}
    per: dict[str, dict[str, Any]] = {}
    for i, card in enumerate(cards):
        validation = card.get("validation")
        if not validation:
            raise ValueError(f"cross-validation: run {i + 1}'s card has no validation figures (an --all-splits or "
                             "--no-eval run): give the --hold-out runs' cards")
        if not any(r["split"].startswith(HELD_OUT) for r in validation.values()):
            raise ValueError(f"cross-validation: run {i + 1}'s card holds no case out (not a --hold-out run)")
        for name, result in validation.items():
            entry = per.setdefault(name, {"splits": [], "n": [], "held_out": [], "metrics": {}})
            _add_run(entry, name, result, i + 1, seen)
    return {name: {"runs": len(e["n"]), "cases": sum(e["n"]), "split": _split_summary(e["splits"], e["n"]),
                   "held_out": e["held_out"], "metrics": {m: _mean_sd(v) for m, v in e["metrics"].items()}}
            for name, e in per.items()}


def _add_run(entry: dict[str, Any], name: str, result: dict[str, Any], run: int, seen: dict[str, int]) -> None:
    """Add run number ``run``'s validation ``result`` of dataset ``name`` to its ``entry``;
    ``seen`` maps ``dataset:case`` to the run that held it out (a case held out twice is refused)."""
    entry["splits"].append(result["split"])
    entry["n"].append(int(result["n"]))
    held = _held_out_cases(result["split"])
    entry["held_out"].append(held)
    for case in held:
        key = f"{name}:{case}"
        if key in seen:
            raise ValueError(f"cross-validation: {name} case {case} is held out by runs {seen[key]} and {run}: "
                             "each case is held out once")
        seen[key] = run
    for metric, value in flat_metrics(result["metrics"]).items():
        entry["metrics"].setdefault(metric, []).append(value)


def _split_summary(splits: list[str], n: list[int]) -> str:
    """``"held out, one case per run"`` (or ``"held out, K cases over R runs"``) when every run
    held cases out, else the split's name (the names joined by `` / `` when runs differ)."""
    if all(s.startswith(HELD_OUT) for s in splits):
        return f"{HELD_OUT}, one case per run" if set(n) == {1} else f"{HELD_OUT}, {sum(n)} cases over {len(n)} runs"
    return " / ".join(dict.fromkeys(splits))


def cross_validation_section(cards: list[dict[str, Any]], run_dirs: list[str | Path],
                             model_dir: str | Path) -> dict[str, Any]:
    """The model card's ``"cross_validation"`` entry: :func:`cross_validation_summary` of the
    ``--hold-out`` runs' ``cards`` (read from ``run_dirs``), the runs' folder names and the commands
    that reproduce the figures (``scripts/pretrain_cv.sh`` with the runs' data, budget and device,
    then ``main.py cv-card``).

    Raises:
        ValueError: as :func:`cross_validation_summary`, or ``cards`` and ``run_dirs`` of
            different lengths.

    Example:
        >>> card = {"validation": {"brats": {"split": "held out: a", "n": 1, "metrics": {"dice_wt": 0.5}}},
        ...         "command": "python main.py pretrain --data ../shared/data --hold-out brats:a",
        ...         "config": {"max_minutes": 80.0, "steps": 20000}, "device": "cuda"}
        >>> section = cross_validation_section([card], ["cv/holdout_a"], "cv/all")
        >>> section["runs"], section["commands"][0]
        (['holdout_a'], 'STEPS=20000 bash scripts/pretrain_cv.sh ../shared/data cv 80.0 cuda')
    """
    if len(cards) != len(run_dirs):
        raise ValueError(f"cross-validation: {len(cards)} cards but {len(run_dirs)} run folders")
    summary = cross_validation_summary(cards)
    dirs = [Path(d) for d in run_dirs]
    first = cards[0]
    words = shlex.split(first.get("command", ""))
    data = words[words.index("--data") + 1] if "--data" in words[:-1] else "DATA"
    parents = {str(d.parent) for d in dirs}
    out = parents.pop() if len(parents) == 1 else "OUT"
    config = first.get("config") or {}
    minutes = config.get("max_minutes", "MINUTES")
    steps = f"STEPS={config['steps']} " if "steps" in config else ""
    commands = [f"{steps}bash scripts/pretrain_cv.sh {data} {out} {minutes} {first.get('device', 'DEVICE')}",
                f"python main.py cv-card {' '.join(str(d) for d in dirs)} --model-dir {model_dir}"]
    return {"runs": [d.name for d in dirs], "datasets": summary, "commands": commands}


def _mean_sd_text(metrics: dict[str, dict[str, Any]]) -> str:
    """``"name mean ± sd, ..."`` of a summary's metrics, three decimals."""
    return ", ".join(f"{m} {v['mean']:.3f} ± {v['sd']:.3f}" for m, v in metrics.items())


def _cross_validation_lines(section: dict[str, Any]) -> list[str]:
    """The model card's Markdown of a :func:`cross_validation_section`."""
    summary = section["datasets"]
    runs = len(section["runs"])
    held = next((name for name, s in summary.items() if s["split"].startswith(HELD_OUT)), None)
    if held is not None:
        sizes = {len(cases) for cases in summary[held]["held_out"]}
        size = sizes.pop() if len(sizes) == 1 else None
        each = "one" if size == 1 else str(size) if size else "a few"
        how = f"each holding out {each} {_DISPLAY.get(held, held)} case{'' if size == 1 else 's'}"
    else:
        how = "each holding out cases"
    lines = ["", f"Figures of this recipe on cases its runs never saw ({runs} runs, {how}; mean ± sd over runs, "
                 "sample sd). The other datasets' rows are their validation split, scored by every run's model:", "",
             "| dataset | split | runs | cases | metrics (mean ± sd) |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['split']} | {s['runs']} | {s['cases']} | {_mean_sd_text(s['metrics'])} |")
    if held is not None:
        runs_cases = zip(section["runs"], summary[held]["held_out"])
        pairs = ", ".join(f"{run}: {', '.join(cases)}" for run, cases in runs_cases)
        lines += ["", f"Held-out {held} cases: {pairs}."]
    lines += ["", "Reproduced by:", "", "```", *section["commands"], "```"]
    return lines


def format_cross_validation(summary: dict[str, dict[str, Any]]) -> str:
    """A short plain-text table of :func:`cross_validation_summary`: one line per dataset.

    Example:
        >>> print(format_cross_validation({"brats": {"split": "held out, one case per run", "runs": 2, "cases": 2,
        ...     "metrics": {"dice_wt": {"mean": 0.7, "sd": 0.1414, "values": [0.6, 0.8]}}}}))
        dataset      split                        runs  cases  metrics (mean ± sd)
        brats        held out, one case per run      2      2  dice_wt 0.700 ± 0.141
    """
    rows = [f"{'dataset':12s} {'split':28s} {'runs':>4s} {'cases':>6s}  metrics (mean ± sd)"]
    for name, s in summary.items():
        rows.append(f"{name:12s} {s['split']:28s} {s['runs']:4d} {s['cases']:6d}  {_mean_sd_text(s['metrics'])}")
    return "\n".join(rows)


def _how_trained(card: dict[str, Any]) -> str:
    """The card's sentence on how the checkpoint was trained: one part, or every part and the totals."""
    machine = f"{card['machine']['cpus']} CPU cores ({card['machine']['platform']}, torch {card['machine']['torch']})"
    parts = card.get("parts") or []
    if len(parts) <= 1:
        return (f"trained by `{card['command']}` in {card['train_minutes']} minutes, {card['steps']} steps, "
                f"on {card.get('device', 'cpu')}, {machine}.")
    each = "; ".join(f"{p['started']}: {p['steps']} steps, {p['minutes']} minutes on {p['device']}" for p in parts)
    devices = " and ".join(card["devices"])
    return (f"trained by `{card['command']}` (continued with `--resume`) in {len(parts)} parts ({each}): "
            f"total {card['steps']} steps, {card['train_minutes']} minutes on {devices}; last part on {machine}.")


def write_model_card(model_dir: Path, card: dict[str, Any]) -> None:
    """``model_card.json`` and ``MODEL_CARD.md`` beside the checkpoint: how it was trained (and
    the card's ``notes``, a list of sentences, when it has them), on what, its validation figures
    when the card has them and its cross-validation figures (:func:`cross_validation_section`,
    added by ``main.py cv-card``) when it has those."""
    (model_dir / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
    lines = ["# UniMed shipped checkpoint", "", f"Version {card.get('version')}, {_how_trained(card)}", ""]
    lines += [f"- {note}" for note in card.get("notes", [])] + ([""] if card.get("notes") else [])
    lines += ["| source | split | samples | tasks |", "|---|---|---|---|"]
    for name, d in card["data"].items():
        lines.append(f"| {name} | {d['split']} | {d['samples']} | {', '.join(d['tasks'])} |")
    lines.append(f"| unlabelled (self-supervised) | - | {card['unlabelled_samples']} | masked-image reconstruction |")
    if "validation" in card:
        lines += ["", "Validation figures (held-out splits; each row's command reproduces it):", "",
                  "| dataset | split | n | metrics | command |", "|---|---|---|---|---|"]
        for name, r in card["validation"].items():
            metrics = ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items() if isinstance(v, (int, float)))
            lines.append(f"| {name} | {r['split']} | {r['n']} | {metrics} | `{r['command']}` |")
    if "cross_validation" in card:
        lines += _cross_validation_lines(card["cross_validation"])
    (model_dir / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
