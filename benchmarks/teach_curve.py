"""Leave-one-label-out: how well ``teach`` learns a label that pretraining never saw.

``python main.py teach-curve --checkpoint BASE.pt --data ../shared/data`` takes a checkpoint
pretrained without the label (``main.py pretrain --leave-out-label lung_tumor``) and, for each
k of ``--ks``, teaches it the label from k annotated training cases (:func:`trainers.teach.teach_samples`,
the path of ``main.py teach`` and of the viewer) in a fixed budget, then scores:

- the taught label on the dataset's whole validation split,
- a single-task network trained from scratch on the same k cases for the same budget (the
  dataset's peer of ``main.py benchmark --accuracy``),
- the old labels' figures before and after teaching (forgetting).

The k cases are nested (the 3 include the 1, ...), drawn with a fixed seed from the training
cases that show the structure: an annotator labels cases where it is. Which cases are drawn
moves a run by as much as the changes one wants to measure (lung tumour, k = 5: 0.63 and 0.44
for seeds 0 and 1), so ``--repeats N`` runs the curve for N seeds, each with its own draw, and
reports each k's mean and standard deviation over them.
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unimed.datasets.sample import Sample
from unimed.metrics import mean_sd

__all__ = ["CURVE_DATASETS", "CurveLabel", "TeachCurveConfig", "curve_figures", "teach_curve", "summarise_rows",
           "format_teach_curve", "plot_teach_curve"]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class CurveLabel:
    """A label :func:`teach_curve` can leave out: the shared dataset whose annotations teach it
    (one with a single-task peer), the tasks they teach, and the figure that scores it there.

    Attributes:
        dataset: the dataset kind (``msd_patches``, ``voc``).
        tasks: what its annotations teach: masks segmentation and detection, boxes detection.
        metric: the figure of the taught label: a metric of the dataset's evaluation, or
            ``ap50_<label>`` (the label's own average precision of a detection dataset).
    """

    dataset: str
    tasks: tuple[str, ...]
    metric: str


#: label -> how its leave-one-label-out curve is taught and scored
CURVE_DATASETS = {
    "lung_tumor": CurveLabel("msd_patches", ("segmentation", "detection"), "dice"),
    "platelet": CurveLabel("voc", ("detection",), "ap50_platelet"),
}

#: old datasets scored before and after teaching, and the figure each shows
OLD_FIGURES = {"brats": "dice_wt", "voc": "map50"}


@dataclass
class TeachCurveConfig:
    """What :func:`teach_curve` measures.

    Attributes:
        data: a folder in the shared data layout (the label's dataset, the replay, the old figures).
        checkpoint: a checkpoint pretrained without ``label``.
        label: the label left out and taught (a key of :data:`CURVE_DATASETS`).
        ks: the numbers of annotated cases to teach from.
        minutes: the budget of each teaching run; the scratch network gets the same.
        replay: replay the shared data while teaching (as ``teach``'s default does).
        seed: picks the cases and seeds training.
        repeats: curves to run, for seeds ``seed`` to ``seed + repeats - 1`` (each draws its own
            cases); the result's ``summary`` holds each k's mean and sd over them.
    """

    data: Path
    checkpoint: Path
    label: str = "lung_tumor"
    ks: tuple[int, ...] = (1, 3, 5, 10)
    minutes: float = 4.0
    replay: bool = True
    seed: int = 0
    repeats: int = 1

    def __post_init__(self) -> None:
        self.data, self.checkpoint = Path(self.data), Path(self.checkpoint)
        if self.label not in CURVE_DATASETS:
            raise ValueError(f"teach-curve measures {', '.join(CURVE_DATASETS)} (a label with a shared dataset and a "
                             f"single-task peer), got {self.label!r}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive numbers of cases, got {self.ks}")
        if self.minutes <= 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")


def _as_new_label(sample: Sample, value: int, name: str) -> Sample:
    """``sample`` as teach takes it: its mask with the new label's id on the structure, nothing
    else; or (a sample without a mask) its boxes of ``name`` alone.

    Example:
        >>> import torch
        >>> s = Sample(torch.zeros(3, 8, 8), np.eye(4), "voc", "c", boxes=np.zeros((2, 6)),
        ...            box_labels=["platelet", "red_blood_cell"], det_labels=("platelet", "red_blood_cell"))
        >>> out = _as_new_label(s, 12, "platelet")
        >>> out.box_labels, out.det_labels, out.boxes.shape
        (['platelet'], ('platelet',), (1, 6))
    """
    if sample.label_map is None:
        keep = [i for i, b in enumerate(sample.box_labels) if b == name]
        return replace(sample, boxes=np.asarray(sample.boxes).reshape(-1, 6)[keep], box_labels=[name] * len(keep),
                       det_labels=(name,), class_labels=None)
    structure = np.asarray(sample.label_map) > 0
    return replace(sample, label_map=structure.astype(np.uint8) * np.uint8(value), class_labels=None)


def curve_figures(metrics: dict[str, Any], label: str) -> dict[str, Any]:
    """An evaluation's figures with the label's own average precision as ``ap50_<label>`` (where
    the evaluation gives per-class ``ap50``), the per-class table left out.

    Example:
        >>> curve_figures({"map50": 0.8, "ap50": {"platelet": 0.7, "red_blood_cell": 0.9}}, "platelet")
        {'map50': 0.8, 'ap50_platelet': 0.7}
    """
    out = {k: v for k, v in metrics.items() if k != "ap50"}
    if isinstance(metrics.get("ap50"), dict):
        out[f"ap50_{label}"] = metrics["ap50"].get(label)
    return out


def _old_samples(data: Path, left_out: str) -> dict[str, list[Sample]]:
    """The validation cases of :data:`OLD_FIGURES`' datasets that ``data`` holds, read once,
    without the left-out label's annotations (the old figures are of the old labels)."""
    from trainers.pretrain import DATASETS, without_label

    return {name: without_label(DATASETS[name].read(data / DATASETS[name].folder, DATASETS[name].val_split), left_out)
            for name in OLD_FIGURES if (data / DATASETS[name].folder).is_dir()}


def _old_figures(model: Any, old: dict[str, list[Sample]]) -> dict[str, float | None]:
    from trainers.pretrain import DATASETS
    from unimed.evaluation import evaluate_samples
    from unimed.predictor import Predictor

    predictor, out = Predictor(model), {}
    for name, samples in old.items():
        metric = OLD_FIGURES[name]
        out[f"{name}/{metric}"] = evaluate_samples(DATASETS[name].kind, samples, predictor).get(metric)
    return out


def teach_curve(config: TeachCurveConfig, progress: bool = False) -> dict[str, Any]:
    """Teach ``config.label`` from k cases for every k, and score each run against a scratch peer.

    Returns:
        ``{"label", "dataset", "checkpoint", "minutes", "val_cases", "base_old", "rows", "summary"}``;
        each row (one per seed and k): ``{"seed", "k", "cases", "taught": {metric: value},
        "scratch": {...}, "old": {...}, "teach": report, "scratch_fit": {...}}``; the summary
        (:func:`summarise_rows`) has each k's mean and sd over the seeds.

    Raises:
        ValueError: the checkpoint already has the label, the data lacks its dataset, or a k
            exceeds the training cases that show the structure.

    Example:
        >>> cfg = TeachCurveConfig(Path("../shared/data"), Path("runs/lolo/unimed.pt"), ks=(1, 5))  # doctest: +SKIP
        >>> print(format_teach_curve(teach_curve(cfg)))  # doctest: +SKIP
    """
    from benchmarks.peers import PEERS
    from trainers.joint import seed_everything
    from trainers.pretrain import DATASETS, shows_label
    from trainers.teach import teach_samples
    from unimed.checkpoint import load_checkpoint
    from unimed.evaluation import evaluate_samples
    from unimed.predictor import Predictor

    base, meta = load_checkpoint(config.checkpoint)
    if config.label in base.registry:
        raise ValueError(f"{config.checkpoint} already knows {config.label!r}: pretrain the base with "
                         f"--leave-out-label {config.label}")
    curve = CURVE_DATASETS[config.label]
    kind, metric = curve.dataset, curve.metric
    spec = DATASETS[kind]
    folder = config.data / spec.folder
    if not folder.exists():
        raise ValueError(f"no {kind} data at {folder}")
    train, val = spec.read(folder, spec.train_split), spec.read(folder, spec.val_split)
    showing = [s for s in train if shows_label(s, config.label)]
    if max(config.ks) > len(showing):
        raise ValueError(f"k up to {max(config.ks)}, but only {len(showing)} training cases show {config.label}")
    old_samples = _old_samples(config.data, config.label)
    base_old = _old_figures(base, old_samples)
    logger.info("teach-curve %s: base %s, old figures %s", config.label, meta.get("version"), base_old)
    rows = []
    for seed in range(config.seed, config.seed + config.repeats):
        chosen = random.Random(seed).sample(showing, max(config.ks))
        for k in sorted(config.ks):
            cases = chosen[:k]
            model = copy.deepcopy(base)
            value = model.registry.next_id()
            annotated = [_as_new_label(s, value, config.label) for s in cases]
            report = teach_samples(model, config.label, annotated, tasks=curve.tasks, minutes=config.minutes,
                                   replay_data=config.data if config.replay else None, seed=seed, progress=progress)
            taught = curve_figures(evaluate_samples(kind, val, Predictor(model.eval())), config.label)
            old = _old_figures(model, old_samples)
            seed_everything(seed)
            peer = PEERS[kind](annotated)
            fit = peer.fit(config.minutes * 60)
            scratch = curve_figures(evaluate_samples(kind, val, peer), config.label)
            logger.info("seed %d, k=%d: taught %s, scratch %s, old %s", seed, k, taught, scratch, old)
            rows.append({"seed": seed, "k": k, "cases": [s.name for s in cases], "taught": taught, "scratch": scratch,
                         "old": old, "teach": report, "scratch_fit": {"network": peer.name, **fit}})
    return {"label": config.label, "dataset": kind, "checkpoint": {"path": str(config.checkpoint),
                                                                  "version": meta.get("version")},
            "minutes": config.minutes, "replay": config.replay, "seed": config.seed, "repeats": config.repeats,
            "val_cases": len(val), "metric": metric, "base_old": base_old, "rows": rows,
            "summary": summarise_rows(rows, metric)}


def summarise_rows(rows: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per k (ascending): ``{"k", "n", "taught": {"mean", "sd"}, "scratch": {"mean", "sd"}}`` of
    ``metric`` over the rows of that k (sd 0 for one row; rows without the metric are left out).

    Example:
        >>> rows = [{"k": 5, "taught": {"dice": 0.6}, "scratch": {"dice": 0.2}},
        ...         {"k": 5, "taught": {"dice": 0.4}, "scratch": {"dice": 0.3}}]
        >>> s = summarise_rows(rows, "dice")[0]
        >>> s["n"], round(s["taught"]["mean"], 3), round(s["taught"]["sd"], 3), round(s["scratch"]["mean"], 3)
        (2, 0.5, 0.141, 0.25)
    """
    out = []
    for k in sorted({row["k"] for row in rows}):
        at_k = [row for row in rows if row["k"] == k]
        entry: dict[str, Any] = {"k": k, "n": len(at_k)}
        for arm in ("taught", "scratch"):
            entry[arm] = mean_sd([row[arm][metric] for row in at_k if row[arm].get(metric) is not None])
        out.append(entry)
    return out


def format_teach_curve(result: dict[str, Any]) -> str:
    """A Markdown table of :func:`teach_curve`'s result.

    Example:
        >>> row = {"k": 1, "taught": {"dice": 0.5}, "scratch": {"dice": 0.25}, "old": {"brats/dice_wt": 0.8}}
        >>> print(format_teach_curve({"label": "x", "dataset": "d", "metric": "dice", "val_cases": 3, "minutes": 1,
        ...                           "base_old": {"brats/dice_wt": 0.81}, "rows": [row]}).splitlines()[-1])
        | 1 | 0.500 | 0.250 | 0.800 (0.810) |
    """
    metric, old_keys = result["metric"], list(result["base_old"])
    lines = [f"{result['label']} taught anew ({result['dataset']} validation, {result['val_cases']} cases, "
             f"{result['minutes']} min per run)", "",
             "| k | taught " + metric + " | scratch " + metric + " | " + " | ".join(
                 f"{key} after (before)" for key in old_keys) + " |",
             "|---|---|---|" + "---|" * len(old_keys)]

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    for row in result["rows"]:
        old = " | ".join(f"{fmt(row['old'].get(key))} ({fmt(result['base_old'][key])})" for key in old_keys)
        seed = f" (seed {row['seed']})" if result.get("repeats", 1) > 1 else ""
        lines.append(f"| {row['k']}{seed} | {fmt(row['taught'].get(metric))} | {fmt(row['scratch'].get(metric))} "
                     f"| {old} |")
    if result.get("repeats", 1) > 1:
        lines += ["", f"Over {result['repeats']} seeds, mean ± sd:", "",
                  f"| k | taught {metric} | scratch {metric} |", "|---|---|---|"]
        for entry in result["summary"]:
            lines.append(f"| {entry['k']} | {fmt(entry['taught']['mean'])} ± {fmt(entry['taught']['sd'])} "
                         f"| {fmt(entry['scratch']['mean'])} ± {fmt(entry['scratch']['sd'])} |")
    return "\n".join(lines)


def plot_teach_curve(result: dict[str, Any], path: str | Path, reference: Sequence[float] = ()) -> Path:
    """The taught label's figure against k, the scratch network's beside it, and (``reference``:
    mean and sd) the figure of networks pretrained with the label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unimed.figures import save_figure

    metric = result["metric"]
    summary = result.get("summary") or summarise_rows(result["rows"], metric)
    ks = [entry["k"] for entry in summary]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arm, style, name in (("taught", "o-", "UniMed taught (teach)"), ("scratch", "s--", "single-task from scratch")):
        measured = [entry for entry in summary if entry[arm]["mean"] is not None]  # a k no run measured: no point
        ax.errorbar([entry["k"] for entry in measured], [entry[arm]["mean"] for entry in measured],
                    yerr=[entry[arm]["sd"] or 0.0 for entry in measured], fmt=style, capsize=3, label=name)
    if reference:
        mean, sd = reference[0], reference[1] if len(reference) > 1 else 0.0
        ax.axhspan(mean - sd, mean + sd, alpha=0.2, color="grey")
        ax.axhline(mean, color="grey", label="pretrained with the label")
    ax.set_xlabel("annotated cases (k)")
    ax.set_ylabel(f"{result['label']} {metric} ({result['dataset']} val)")
    ax.set_xticks(ks)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
