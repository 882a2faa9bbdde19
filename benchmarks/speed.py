"""Speed and peak memory of one volume: UniMed's three tasks vs MONAI Label's stock segmentation.

Variants, each timed from the image file to the answer in the image's own grid:

- ``unimed_all_tasks``: segmentation, detection and classification of the image, one after
  the other, as a viewer asks for them; the backbone runs once and its features are cached.
- ``unimed_segmentation`` / ``unimed_detection`` / ``unimed_classification``: one task alone
  (cold cache: backbone and decoder).
- ``segresnet_stock``: MONAI Label's radiology segmentation pipeline (:mod:`.stock`).

The variants run alternately in one process (the order rotates each repeat) so that a load
change on a shared machine hits them alike; medians are reported with their ratio to the
stock pipeline. Peak RSS is measured per variant in a fresh process (see :mod:`.timing`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.stock import StockSegmentation, StockSegmentationConfig
from benchmarks.timing import peak_rss_mib, run_in_fresh_process, summarize

__all__ = ["SpeedConfig", "VARIANTS", "SpeedBench", "benchmark_speed"]

logger = logging.getLogger(__name__)

TASKS = ("segmentation", "detection", "classification")
VARIANTS = ("unimed_all_tasks", "unimed_segmentation", "unimed_detection", "unimed_classification", "segresnet_stock")
STOCK = "segresnet_stock"


@dataclass
class SpeedConfig:
    """What :func:`benchmark_speed` measures.

    Attributes:
        image: the volume (any format :func:`unimed.transforms.load_image` reads).
        checkpoint: UniMed checkpoint; None for untrained weights of ``model`` size.
        model: ``small`` (the shipped size) or ``tiny`` (tests); used when ``checkpoint`` is None.
        repeats: timed runs of each variant (after one untimed warm-up run each).
        variants: which variants to run (``segresnet_stock`` is needed for the ratios).
        memory: measure each variant's peak RSS in a fresh process.
        threads: torch intra-op threads (None: torch's default).
        predictor: keyword arguments of :class:`unimed.predictor.Predictor`.
        stock: the stock pipeline's settings; ``in_channels`` follows the image.
    """

    image: Path
    checkpoint: Path | None = None
    model: str = "small"
    repeats: int = 3
    variants: tuple[str, ...] = VARIANTS
    memory: bool = True
    threads: int | None = None
    predictor: dict[str, Any] = field(default_factory=dict)
    stock: StockSegmentationConfig = field(default_factory=StockSegmentationConfig)

    def __post_init__(self) -> None:
        self.image = Path(self.image)
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        unknown = set(self.variants) - set(VARIANTS)
        if unknown or not self.variants:
            raise ValueError(f"variants must be a non-empty subset of {', '.join(VARIANTS)}; unknown: {sorted(unknown)}")
        if self.model not in ("small", "tiny"):
            raise ValueError(f"model must be 'small' or 'tiny', got {self.model!r}")
        roi = self.predictor.get("roi_size_3d", 16)
        if roi < 16 or roi % 16:
            raise ValueError(f"UniMed's sliding-window size must be a positive multiple of 16, got {roi}")
        if not 0 <= self.predictor.get("overlap", 0.0) < 1:
            raise ValueError(f"UniMed's sliding-window overlap must be in [0, 1), got {self.predictor['overlap']}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")


class SpeedBench:
    """The models and the image path of a speed benchmark; :meth:`run` times one variant once.

    Example:
        >>> bench = SpeedBench(SpeedConfig(image="volume.nii.gz", model="tiny"))  # doctest: +SKIP
        >>> bench.run("unimed_all_tasks")["seconds"]  # doctest: +SKIP
        1.9
    """

    def __init__(self, config: SpeedConfig):
        from unimed.checkpoint import load_checkpoint
        from unimed.networks.unimednet import unimed_small, unimed_tiny
        from unimed.predictor import Predictor
        from unimed.transforms import load_image

        if not config.image.exists():
            raise FileNotFoundError(f"benchmark image {config.image} does not exist")
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        if config.checkpoint is not None:
            model, _ = load_checkpoint(config.checkpoint)
        else:
            model = unimed_small() if config.model == "small" else unimed_tiny()
        self.predictor = Predictor(model, **config.predictor)
        self.channels = int(load_image(config.image).shape[0])
        self.stock: StockSegmentation | None = None
        if STOCK in config.variants:
            stock_config = StockSegmentationConfig(**{**asdict(config.stock), "in_channels": self.channels})
            self.stock = StockSegmentation(stock_config)

    def run(self, variant: str) -> dict[str, Any]:
        """Time one variant once: ``{"seconds": total, "stages": {stage: seconds}}``."""
        from unimed.transforms import load_image

        t0 = time.perf_counter()
        image = load_image(self.config.image)
        stages: dict[str, float] = {"load": time.perf_counter() - t0}
        if variant == STOCK:
            assert self.stock is not None
            t = time.perf_counter()
            x = self.stock.preprocess(image)
            stages["preprocess"] = time.perf_counter() - t
            t = time.perf_counter()
            probs = torch.softmax(self.stock.logits(x).float(), dim=0)
            stages["network"] = time.perf_counter() - t
            t = time.perf_counter()
            self.stock.restore(probs, x)
            stages["restore"] = time.perf_counter() - t
        else:
            tasks = TASKS if variant == "unimed_all_tasks" else (variant.removeprefix("unimed_"),)
            self.predictor.clear_cache()
            for task in tasks:
                t = time.perf_counter()
                pred = self.predictor.predict(image, task, key=str(self.config.image))
                if task == "segmentation":
                    pred.label_map()
                stages[task] = time.perf_counter() - t
                for stage, s in pred.seconds.items():
                    stages[f"{task}/{stage}"] = s
        return {"seconds": time.perf_counter() - t0, "stages": stages}


def _variant_peak_rss(config: SpeedConfig, variant: str) -> dict[str, float]:
    """In a fresh process: peak RSS after setting up (imports, models) and after one run."""
    bench = SpeedBench(config)
    setup = peak_rss_mib()
    bench.run(variant)
    return {"setup_mib": round(setup, 1), "peak_mib": round(peak_rss_mib(), 1)}


def benchmark_speed(config: SpeedConfig, progress: bool = False) -> dict[str, Any]:
    """Time every variant ``config.repeats`` times, alternating, and measure their peak RSS.

    Returns:
        ``{"image", "image_shape", "repeats", "threads", "settings", "variants": {name: {"seconds":
        summary, "ratio_to_segresnet", "stages", "peak_rss_mib"}}, "targets"}``.
    """
    from unimed.transforms import load_image

    bench = SpeedBench(config)
    variants = list(config.variants)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    total = len(variants) * (config.repeats + 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="speed", unit="run")
    for repeat in range(config.repeats + 1):  # repeat 0 is the untimed warm-up
        shift = repeat % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            result = bench.run(variant)
            if repeat:
                runs[variant].append(result)
            logger.info("speed %s repeat %d: %.2f s", variant, repeat, result["seconds"])
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{variant} {result['seconds']:.1f} s")
    if bar is not None:
        bar.close()
    out: dict[str, Any] = {}
    for variant in variants:
        summary = summarize([r["seconds"] for r in runs[variant]])
        stage_names = runs[variant][0]["stages"]
        stages = {k: round(float(summarize([r["stages"][k] for r in runs[variant]])["median"]), 4) for k in stage_names}
        out[variant] = {"seconds": summary, "stages": stages}
    if STOCK in out:
        base = out[STOCK]["seconds"]["median"]
        for variant in variants:
            out[variant]["ratio_to_segresnet"] = round(out[variant]["seconds"]["median"] / base, 4)
    if config.memory:
        for variant in variants:
            if progress:
                print(f"peak memory of {variant} (fresh process)...", flush=True)
            out[variant]["peak_rss_mib"] = run_in_fresh_process(_variant_peak_rss, config, variant)
    result: dict[str, Any] = {
        "image": str(config.image),
        "image_shape": list(load_image(config.image).shape),
        "repeats": config.repeats,
        "threads": torch.get_num_threads(),
        "settings": {
            "checkpoint": str(config.checkpoint) if config.checkpoint else f"untrained unimed_{config.model}",
            "predictor": {k: getattr(bench.predictor, k) for k in ("roi_size_3d", "overlap", "max_size_3d")},
            "stock": asdict(bench.stock.config) if bench.stock else None,
        },
        "variants": out,
    }
    if "unimed_all_tasks" in out and STOCK in out:
        ratio = out["unimed_all_tasks"]["ratio_to_segresnet"]
        peak = out["unimed_all_tasks"].get("peak_rss_mib", {}).get("peak_mib")
        result["targets"] = {
            "all_tasks_ratio": {"target": 0.1, "measured": ratio, "met": ratio <= 0.1},
            "all_tasks_peak_rss_mib": {"target": 2048, "measured": peak, "met": None if peak is None else peak <= 2048},
        }
    return result
