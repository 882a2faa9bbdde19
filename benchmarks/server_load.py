"""``/infer`` latency of a real UniMed server on loopback under concurrent clients.

Each client is a thread with its own :class:`monailabel.client.MONAILabelClient` (the class
the 3D Slicer plugin calls) sending ``requests_per_client`` requests, cycling over the
per-task models on one image, so most requests find the image's features cached (the
viewer's case: one study, several tasks). Separately, the three tasks of the image are sent
one after the other with a cold cache (the image's modification time is bumped first, which
the server's cache key includes): what a clinician waits for on opening a study. While each
level runs, a probe asks ``GET /info`` every ``info_interval`` seconds, as a health check would:
its latency shows whether the light endpoints stay responsive under load.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.timing import summarize
from servers.monailabel_server import ServerProcess

__all__ = ["ServerLoadConfig", "benchmark_server"]

MODELS = ("unimed_seg", "unimed_det", "unimed_cls")


@dataclass
class ServerLoadConfig:
    """What :func:`benchmark_server` measures.

    Attributes:
        app_dir: the MONAI Label app.
        studies: a datastore folder; it is copied, the copy is served.
        checkpoint: the checkpoint served (copied too).
        image: the datastore image id the requests ask about.
        clients: concurrency levels.
        requests_per_client: requests each client sends per level.
        cold_repeats: runs of the cold three-task sequence (0: skip it).
        models: the models cycled over.
        info_interval: seconds between ``GET /info`` probes during each level (0: no probe).
    """

    app_dir: Path
    studies: Path
    checkpoint: Path
    image: str = "brats_pat0001_flair"
    clients: tuple[int, ...] = (1, 4, 16)
    requests_per_client: int = 3
    cold_repeats: int = 3
    models: tuple[str, ...] = MODELS
    info_interval: float = 0.25

    def __post_init__(self) -> None:
        if not self.clients or min(self.clients) < 1:
            raise ValueError(f"clients must be positive concurrency levels, got {self.clients}")
        if self.requests_per_client < 1:
            raise ValueError(f"requests_per_client must be at least 1, got {self.requests_per_client}")
        if self.cold_repeats < 0:
            raise ValueError(f"cold_repeats must be >= 0, got {self.cold_repeats}")
        if not self.models:
            raise ValueError("models must name at least one model")
        if self.info_interval < 0:
            raise ValueError(f"info_interval must be >= 0, got {self.info_interval}")


def _one_level(url: str, config: ServerLoadConfig, clients: int, tmp: Path) -> dict[str, Any]:
    from monailabel.client import MONAILabelClient

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        api = MONAILabelClient(url, tmpdir=str(tmp))
        for r in range(config.requests_per_client):
            model = config.models[(index + r) % len(config.models)]
            t0 = time.perf_counter()
            try:
                out, _ = api.infer(model, config.image, {})
            except Exception as exc:  # noqa: BLE001 - a failed request is a result, reported below
                with lock:
                    errors.append(f"{model}: {exc}")
                continue
            elapsed = time.perf_counter() - t0
            if isinstance(out, str) and os.path.exists(out):
                os.unlink(out)
            with lock:
                latencies.append(elapsed)

    info_latencies: list[float] = []
    done = threading.Event()

    def probe_info() -> None:
        api = MONAILabelClient(url, tmpdir=str(tmp))
        while not done.wait(config.info_interval):
            t = time.perf_counter()
            try:
                api.info()
            except Exception as exc:  # noqa: BLE001 - a failed probe is a result, reported below
                with lock:
                    errors.append(f"/info: {exc}")
                continue
            info_latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    prober = threading.Thread(target=probe_info) if config.info_interval > 0 else None
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    if prober is not None:
        prober.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
    if prober is not None:
        prober.join()
    if not latencies:
        raise RuntimeError(f"every request at {clients} clients failed: {errors[:3]}")
    s = summarize(latencies)
    level = {"clients": clients, "requests": len(latencies), "errors": errors, "p50": s["p50"], "p95": s["p95"],
             "max": s["max"], "wall_seconds": wall, "throughput_rps": len(latencies) / wall}
    if info_latencies:
        i = summarize(info_latencies)
        level["info"] = {"probes": i["n"], "p50": i["p50"], "p95": i["p95"], "max": i["max"]}
    return level


def _cold_three_tasks(url: str, config: ServerLoadConfig, image_file: Path, tmp: Path) -> dict[str, Any]:
    from monailabel.client import MONAILabelClient

    api = MONAILabelClient(url, tmpdir=str(tmp))
    totals, per_model = [], {m: [] for m in MODELS}
    for _ in range(config.cold_repeats):
        now = time.time()
        os.utime(image_file, (now, now))  # a new modification time: a new feature-cache key
        t0 = time.perf_counter()
        for model in MODELS:
            t = time.perf_counter()
            out, _ = api.infer(model, config.image, {})
            per_model[model].append(time.perf_counter() - t)
            if isinstance(out, str) and os.path.exists(out):
                os.unlink(out)
        totals.append(time.perf_counter() - t0)
    return {"seconds": summarize(totals), "per_model_median": {m: summarize(v)["median"] for m, v in per_model.items()}}


def benchmark_server(config: ServerLoadConfig, progress: bool = False) -> dict[str, Any]:
    """Start a server on a copy of ``config.studies`` and measure it.

    Returns:
        ``{"image", "models", "levels": [{"clients", "requests", "p50", "p95", ..., "info"}], "three_tasks_cold"}``;
        a level's ``info`` holds the ``GET /info`` probes' count, p50, p95 and max (seconds).

    Raises:
        ValueError: the image is not in the datastore.
        ServerStartError: the server did not start.
    """
    with tempfile.TemporaryDirectory(prefix="unimed-bench-server-") as tmp_dir:
        tmp = Path(tmp_dir)
        studies = tmp / "datastore"
        shutil.copytree(config.studies, studies, ignore=shutil.ignore_patterns("LICENSES", "SOURCES.md"))
        matches = sorted(studies.glob(config.image + ".*"))
        if not matches:
            raise ValueError(f"image {config.image!r} is not in the datastore {config.studies}")
        model = tmp / "model" / "unimed.pt"
        model.parent.mkdir()
        shutil.copy(config.checkpoint, model)
        out = tmp / "out"
        out.mkdir()
        with ServerProcess(app_dir=config.app_dir, studies=studies, model_path=model, log_path=tmp / "server.log") as srv:
            from monailabel.client import MONAILabelClient

            MONAILabelClient(srv.url, tmpdir=str(out)).infer(config.models[0], config.image, {})  # warm-up
            cold = _cold_three_tasks(srv.url, config, matches[0], out) if config.cold_repeats else None
            levels = []
            for clients in config.clients:
                if progress:
                    print(f"server: {clients} concurrent clients x {config.requests_per_client} requests", flush=True)
                levels.append(_one_level(srv.url, config, clients, out))
    return {"image": config.image, "models": list(config.models), "requests_per_client": config.requests_per_client,
            "levels": levels, "three_tasks_cold": cold}
