"""Interactive segmentation measured by simulated clicks: Dice after each click, and the clicks
needed to reach a Dice, on every case of a dataset folder.

Each case starts with no click. The next click is :func:`unimed.clicks.next_click` of the
current answer against the target (the innermost voxel of the largest error region,
foreground where the object was missed, background where the answer spilled over), in the
image's own voxel grid; the predictor answers all clicks so far
(:meth:`unimed.predictor.Predictor.predict_clicks`, the backbone's features cached per case,
so a click costs a decode). The target is one label's mask, or, class-agnostic, every
labelled voxel (BraTS: the whole tumour).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from unimed.clicks import ClickPrompt, next_click
from unimed.datasets import DatasetError, Sample, dataset_spec
from unimed.figures import save_figure
from unimed.labels import Label
from unimed.metrics import dice, mean_sd
from unimed.predictor import Predictor
from unimed.tasks import Task

__all__ = ["simulate_clicks", "clicks_evaluation", "summarise_cases", "paired_click_gain", "format_clicks_report",
           "format_click_gain", "plot_click_curves", "THRESHOLDS"]

#: the Dice values whose number of clicks is reported
THRESHOLDS = (0.85, 0.90)


def _clicks_to(dices: Sequence[float], threshold: float) -> int | None:
    """The first number of clicks whose Dice reaches ``threshold`` (None: never)."""
    return next((n for n, d in enumerate(dices, start=1) if d >= threshold), None)


def simulate_clicks(
    predictor: Predictor,
    image: Any,
    target: np.ndarray,
    label: Label | None = None,
    clicks: int = 10,
    *,
    key: Any = None,
    thresholds: Sequence[float] = THRESHOLDS,
    on_click: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Simulate up to ``clicks`` clicks on one image and score the answer after each.

    Args:
        predictor: answers the clicks.
        image: channel-first image, as :meth:`Predictor.predict_clicks` takes it.
        target: boolean mask of the image's spatial shape; not empty.
        label: the label the clicks refine; None for the clicked object.
        clicks: most clicks.
        key: the image's feature-cache key.
        thresholds: Dice values whose number of clicks is reported.
        on_click: called after each click (a progress bar's tick).

    Returns:
        ``{"dice": [after click 1, 2, ...], "clicks_to": {"0.85": n or None, ...},
        "seconds_per_click": [...], "clicks": [[[i, j, k], is_foreground], ...],
        "refinement": [{"auc": a or None, "weight": w} or None per click]}`` (the boundary
        refinement's separability and weight, :mod:`unimed.boundary_refinement`). When the answer
        equals the target before ``clicks`` clicks, no more click is made and the last Dice
        stands for the remaining ones.

    Raises:
        ValueError: an empty target, a target of another shape than the image, or ``clicks < 1``.

    Example:
        >>> from unimed.networks.unimednet import unimed_tiny
        >>> target = np.zeros((24, 20, 16), bool); target[8:16, 6:14, 4:12] = True
        >>> out = simulate_clicks(Predictor(unimed_tiny()), torch.rand(1, 24, 20, 16), target, clicks=2)  # doctest: +SKIP
        >>> len(out["dice"])  # doctest: +SKIP
        2
    """
    if clicks < 1:
        raise ValueError(f"clicks must be >= 1, got {clicks}")
    target = np.asarray(target, dtype=bool)
    shape = tuple(int(n) for n in image.shape[1:])
    if target.shape != shape:
        raise ValueError(f"the target's shape {target.shape} differs from the image's {shape}")
    if not target.any():
        raise ValueError("the target is empty: there is nothing to click on")
    prompt, answer = ClickPrompt(), np.zeros_like(target)
    dices: list[float] = []
    seconds: list[float] = []
    placed: list[list[Any]] = []
    refinements: list[dict[str, Any] | None] = []
    for _ in range(clicks):
        step = next_click(answer, target)
        if step is None:
            break
        voxel, foreground = step
        position = ClickPrompt.from_voxels(shape, foreground=[voxel]).foreground[0]
        prompt = prompt.with_click(position, foreground)
        placed.append([list(voxel), bool(foreground)])
        t0 = time.perf_counter()
        pred = predictor.predict_clicks(image, prompt, label, key=key)
        seconds.append(time.perf_counter() - t0)
        lm = pred.label_map().reshape(shape)
        answer = lm != 0
        dices.append(dice(answer, target))
        refinements.append(None if pred.refinement is None else dataclasses.asdict(pred.refinement))
        if on_click is not None:
            on_click()
    if on_click is not None:
        for _ in range(clicks - len(dices)):
            on_click()
    dices += [dices[-1] if dices else 1.0] * (clicks - len(dices))
    return {"dice": dices, "clicks_to": {f"{t:.2f}": _clicks_to(dices, t) for t in thresholds},
            "seconds_per_click": seconds, "clicks": placed, "refinement": refinements}


def _target(sample: Sample, label: Label | None) -> np.ndarray:
    label_map = np.asarray(sample.label_map)
    return label_map == label.id if label is not None else label_map > 0


def summarise_cases(cases: Sequence[dict[str, Any]], thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """Mean and sd of Dice after each click and of the clicks to each threshold (over the cases
    that reach it; ``never`` counts the others), and the median seconds per click.

    Example:
        >>> s = summarise_cases([{"dice": [0.5, 0.9], "clicks_to": {"0.90": 2}, "seconds_per_click": [1.0, 3.0]},
        ...                      {"dice": [0.7, 0.8], "clicks_to": {"0.90": None}, "seconds_per_click": [2.0]}],
        ...                     thresholds=(0.9,))
        >>> s["dice"][0]["mean"], s["clicks_to"]["0.90"], s["median_seconds_per_click"]
        (0.6, {'mean': 2.0, 'sd': 0.0, 'reached': 1, 'never': 1}, 2.0)
    """
    n_clicks = max((len(c["dice"]) for c in cases), default=0)
    per_click = [mean_sd([c["dice"][i] for c in cases if i < len(c["dice"])]) for i in range(n_clicks)]
    reach = {}
    for t in thresholds:
        name = f"{t:.2f}"
        got = [c["clicks_to"][name] for c in cases if c["clicks_to"].get(name) is not None]
        reach[name] = {**mean_sd(got), "reached": len(got), "never": len(cases) - len(got)}
    seconds = [s for c in cases for s in c["seconds_per_click"]]
    return {"dice": per_click, "clicks_to": reach,
            "median_seconds_per_click": float(statistics.median(seconds)) if seconds else None}


def clicks_evaluation(
    kind: str,
    data: str | Path,
    predictor: Predictor,
    label: str | None = None,
    clicks: int = 10,
    split: str | None = None,
    progress: bool = False,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[str, Any]:
    """Simulate clicks on every case with a segmentation of a dataset folder.

    Args:
        kind: a registered dataset kind (:data:`unimed.datasets.DATASETS`) whose samples carry
            label maps (``brats``, ``msd_patches``, ``datastore``).
        data: the dataset folder or file.
        predictor: answers the clicks; its model must take clicks.
        label: the label to segment (its mask is the target); None: class-agnostic, every
            labelled voxel is the target and the predictor is asked for the clicked object.
        clicks: clicks per case.
        split: as :func:`unimed.evaluation.evaluate` reads it (None: the kind's evaluation split;
            a folder without split files gives every case).
        progress: show a progress bar (one tick per click).
        thresholds: Dice values whose number of clicks is reported.

    Returns:
        ``{"dataset", "split", "label", "clicks", "n", "cases": [{"name", "dice", "clicks_to",
        "seconds_per_click", "clicks"}], "skipped": [{"name", "reason"}], "summary"}`` (the
        summary of :func:`summarise_cases`).

    Raises:
        ValueError: ``clicks < 1``, or a model without click prompts.
        UnknownLabelError: an unknown label, or one that cannot be segmented.
        DatasetError: the reader's errors, or no case with a non-empty target.
    """
    if clicks < 1:
        raise ValueError(f"clicks must be >= 1, got {clicks}")
    if predictor.model.click_encoder is None:
        raise ValueError("the checkpoint was not trained for clicks (its config has clicks off)")
    resolved = predictor.model.registry.resolve([label], Task.SEGMENTATION)[0] if label else None
    spec = dataset_spec(kind)
    if split is None:
        split = spec.evaluation_split(data)
    samples = spec.reader(data, split)
    if not any(s.label_map is not None for s in samples):
        raise DatasetError(f"{data}: no {kind} case with a segmentation (clicks-eval needs label maps)")
    cases: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(samples) * clicks, desc=f"clicks-eval {kind}", unit="click")
    try:
        for sample in samples:
            if sample.label_map is None:
                skipped.append({"name": sample.name, "reason": "no segmentation"})
                continue
            target = _target(sample, resolved)
            if not target.any():
                skipped.append({"name": sample.name, "reason": "the target is empty"})
                if bar is not None:
                    bar.update(clicks)
                continue
            image = sample.meta_image()
            out = simulate_clicks(predictor, image, target.reshape(image.shape[1:]), resolved, clicks,
                                  key=(kind, str(data), sample.name), thresholds=thresholds,
                                  on_click=None if bar is None else lambda: bar.update(1))
            predictor.clear_cache()  # one case's features at a time
            cases.append({"name": sample.name, **out})
    finally:
        if bar is not None:
            bar.close()
    if not cases:
        raise DatasetError(f"{data}: no {kind} case with a non-empty target "
                           f"({'label ' + resolved.name if resolved else 'any label'}) to click on")
    return {"dataset": kind, "split": split, "label": resolved.name if resolved else None, "clicks": clicks,
            "n": len(cases), "cases": cases, "skipped": skipped, "summary": summarise_cases(cases, thresholds)}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def paired_click_gain(result: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Dice after each click of ``result`` minus ``baseline``'s, paired by case name.

    Two checkpoints measured on the same cases differ less than their spreads over the cases
    suggest; the paired differences say by how much, and on how many cases either is ahead.

    Args:
        result: a :func:`clicks_evaluation` result.
        baseline: another, of the same number of clicks (typically another checkpoint's JSON).

    Returns:
        ``{"n", "only_in_result", "only_in_baseline", "gain": [{"mean", "sd", "better", "worse"}]}``,
        one entry per click; ``better``/``worse`` count the cases whose Dice differs by more than 0.001.

    Raises:
        ValueError: different numbers of clicks, no case in both, or a case with fewer Dice values than clicks.

    Example:
        >>> a = {"clicks": 2, "cases": [{"name": "x", "dice": [0.5, 0.9]}, {"name": "y", "dice": [0.6, 0.7]}]}
        >>> b = {"clicks": 2, "cases": [{"name": "x", "dice": [0.4, 0.8]}, {"name": "y", "dice": [0.6, 0.75]}]}
        >>> g = paired_click_gain(a, b)
        >>> [round(c["mean"], 3) for c in g["gain"]], g["gain"][1]["better"], g["gain"][1]["worse"]
        ([0.05, 0.025], 1, 1)
    """
    if result["clicks"] != baseline["clicks"]:
        raise ValueError(f"the baseline has {baseline['clicks']} clicks per case, this run {result['clicks']}: "
                         "compare runs of the same --clicks")
    ours = {c["name"]: c["dice"] for c in result["cases"]}
    theirs = {c["name"]: c["dice"] for c in baseline["cases"]}
    common = [name for name in ours if name in theirs]
    if not common:
        raise ValueError("the baseline has no case of this run's (cases are paired by name)")
    short = [name for name in common if min(len(ours[name]), len(theirs[name])) < result["clicks"]]
    if short:
        raise ValueError(f"case {short[0]} has fewer than {result['clicks']} Dice values")
    gain = []
    for i in range(result["clicks"]):
        diffs = [ours[name][i] - theirs[name][i] for name in common]
        gain.append({**mean_sd(diffs), "better": sum(d > 1e-3 for d in diffs), "worse": sum(d < -1e-3 for d in diffs)})
    return {"n": len(common), "only_in_result": sorted(set(ours) - set(theirs)),
            "only_in_baseline": sorted(set(theirs) - set(ours)), "gain": gain}


def format_click_gain(gain: dict[str, Any]) -> str:
    """The lines of a :func:`paired_click_gain`.

    Example:
        >>> print(format_click_gain({"n": 2, "only_in_result": [], "only_in_baseline": ["z"],
        ...                          "gain": [{"mean": 0.05, "sd": 0.07, "better": 1, "worse": 0}]}))
        paired with the baseline over 2 cases (only in the baseline: z)
        click 1: +0.050±0.070, better on 1, worse on 0
    """
    unpaired = [f"only in {side}: {', '.join(gain['only_in_' + key])}"
                for side, key in (("this run", "result"), ("the baseline", "baseline")) if gain["only_in_" + key]]
    lines = [f"paired with the baseline over {gain['n']} cases" + (f" ({'; '.join(unpaired)})" if unpaired else "")]
    for i, g in enumerate(gain["gain"], start=1):
        lines.append(f"click {i}: {g['mean']:+.3f}±{g['sd']:.3f}, better on {g['better']}, worse on {g['worse']}")
    return "\n".join(lines)


def format_clicks_report(result: dict[str, Any]) -> str:
    """Per case and mean ± sd lines of a :func:`clicks_evaluation` result.

    Example:
        >>> case = {"name": "a", "dice": [0.5, 0.9], "clicks_to": {"0.85": 2, "0.90": 2}, "seconds_per_click": [1.0, 1.0]}
        >>> print(format_clicks_report({"dataset": "brats", "split": None, "label": None, "clicks": 2, "n": 1,
        ...                             "cases": [case], "skipped": [], "summary": summarise_cases([case])}))
        brats (split None, target: every labelled voxel), 2 clicks, n=1
        case  dice after click 1..2  clicks to 0.85 / 0.90  s/click
        a  0.500 0.900  2 / 2  1.00
        mean ± sd  0.500±0.000 0.900±0.000  2.0±0.0 (never 0) / 2.0±0.0 (never 0)
        median seconds per click: 1.00
    """
    names = list(result["summary"]["clicks_to"])
    target = f"label {result['label']}" if result["label"] else "every labelled voxel"
    lines = [f"{result['dataset']} (split {result['split']}, target: {target}), {result['clicks']} clicks, n={result['n']}",
             f"case  dice after click 1..{result['clicks']}  clicks to {' / '.join(names)}  s/click"]
    for c in result["cases"]:
        reach = " / ".join("never" if c["clicks_to"][t] is None else str(c["clicks_to"][t]) for t in names)
        secs = statistics.median(c["seconds_per_click"]) if c["seconds_per_click"] else None
        lines.append(f"{c['name']}  {' '.join(_fmt(d) for d in c['dice'])}  {reach}  {_fmt(secs, 2)}")
    s = result["summary"]
    dices = " ".join(f"{_fmt(d['mean'])}±{_fmt(d['sd'])}" for d in s["dice"])
    reach = " / ".join(f"{_fmt(r['mean'], 1)}±{_fmt(r['sd'], 1)} (never {r['never']})" for r in s["clicks_to"].values())
    lines.append(f"mean ± sd  {dices}  {reach}")
    lines.append(f"median seconds per click: {_fmt(s['median_seconds_per_click'], 2)}")
    lines += [f"skipped {k['name']}: {k['reason']}" for k in result.get("skipped", [])]
    return "\n".join(lines)


def plot_click_curves(result: dict[str, Any], path: str | Path) -> Path:
    """Dice against the number of clicks, mean ± sd over the cases and each case faintly, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    xs = np.arange(1, result["clicks"] + 1)
    for c in result["cases"]:
        ax.plot(xs, c["dice"], color="grey", alpha=0.25, linewidth=0.8)
    mean = np.array([d["mean"] for d in result["summary"]["dice"]], dtype=float)
    sd = np.array([d["sd"] for d in result["summary"]["dice"]], dtype=float)
    ax.plot(xs, mean, marker="o", color="tab:blue", label=f"mean of {result['n']} cases")
    ax.fill_between(xs, mean - sd, mean + sd, color="tab:blue", alpha=0.15)
    for t in result["summary"]["clicks_to"]:
        ax.axhline(float(t), color="tab:red", linestyle=":", linewidth=0.8)
    target = result["label"] or "every labelled voxel"
    ax.set_title(f"{result['dataset']}: Dice per simulated click ({target})", fontsize=10)
    ax.set_xlabel("clicks")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return save_figure(fig, path)
