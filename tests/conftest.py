"""Shared fixtures: paths of the repo, the shipped sample datastore and the shared data, and
a real MONAI Label server with the UniMed app on a copy of the sample datastore."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_datastore"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def start_server(tmp_path_factory) -> Iterator[Callable[..., dict[str, Any]]]:
    """A function that starts the UniMed app on a fresh copy of the sample datastore, with a
    copy of the shipped checkpoint (training in tests never touches the shipped model), and
    returns ``{"url", "studies", "model_dir", "client", "log"}``. ``conf`` adds ``--conf`` keys,
    ``env`` environment variables. Every server it started stops when the module's tests end.
    """
    from monailabel.client import MONAILabelClient

    started: list[tuple[subprocess.Popen, Any]] = []

    def start(conf: dict[str, str] | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
        studies = tmp_path_factory.mktemp("datastore")
        shutil.copytree(SAMPLE, studies, dirs_exist_ok=True)
        model_dir = tmp_path_factory.mktemp("model")
        shipped = REPO / "apps" / "unimed" / "model" / "unimed.pt"
        if shipped.exists():
            shutil.copy(shipped, model_dir / "unimed.pt")
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = tmp_path_factory.mktemp("log") / "server.log"
        log = open(log_path, "w+")
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(REPO / "apps" / "unimed"),
               "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port),
               "--conf", "model_path", str(model_dir / "unimed.pt")]
        for key, value in (conf or {}).items():
            cmd += ["--conf", key, value]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, MONAI_LABEL_TRACKING_ENABLED="false", **(env or {})))
        started.append((proc, log))
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/info/", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    pytest.fail(f"server did not start:\n{log.read()[-4000:]}")
                time.sleep(1)
        return {"url": url, "studies": studies, "model_dir": model_dir, "log": log_path,
                "client": MONAILabelClient(url, tmpdir=str(studies.parent))}

    yield start
    for proc, log in started:
        proc.terminate()  # the server's own background jobs end with it
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
