"""Shared fixtures: paths of the repo, the shipped sample datastore and the shared data; and
:func:`monailabel_server`, a real MONAI Label server with the UniMed app in a subprocess."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

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


@pytest.fixture
def app_lib(monkeypatch) -> Path:
    """The app folder on ``sys.path`` for one test, as MONAI Label puts it there when it loads the
    app, so that the app's own package ``lib`` (``lib.infers``, ``lib.activelearning``, ...)
    imports as it does in the server; undone after the test."""
    app = REPO / "apps" / "unimed"
    monkeypatch.syspath_prepend(str(app))
    return app


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@contextlib.contextmanager
def monailabel_server(studies: str | Path, workdir: Path, conf: dict[str, str] | None = None,
                      env: dict[str, str] | None = None, timeout: float = 180,
                      checkpoint: Path | None = None) -> Iterator[dict]:
    """Start ``monailabel start_server`` with the UniMed app on a free port and yield
    ``{"url", "client", "model_dir", "log"}``; stops it on exit.

    The model is a copy of ``checkpoint`` (default: the shipped checkpoint) in ``workdir/model``,
    so training in a test never touches the shipped model.
    """
    from monailabel.client import MONAILabelClient

    from servers.monailabel_server import ServerProcess, ServerStartError

    model_dir = workdir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    shipped = checkpoint or REPO / "apps" / "unimed" / "model" / "unimed.pt"
    if shipped.exists():
        shutil.copy(shipped, model_dir / "unimed.pt")
    server = ServerProcess(app_dir=REPO / "apps" / "unimed", studies=studies, model_path=model_dir / "unimed.pt",
                           timeout=timeout, log_path=workdir / "server.log", conf=conf, env=env)
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(str(exc))
    try:
        yield {"url": server.url, "client": MONAILabelClient(server.url, tmpdir=str(workdir)), "model_dir": model_dir,
               "log": server.log_path}
    finally:
        server.stop()


def make_clicking_model(amplitude: float = 80.0, offset: float = 20.0):
    """``unimed_tiny()`` (clicks on) whose click refiner is set by hand so that its answer
    follows the clicks, as a trained one should, for tests of the click plumbing:
    refined logit = logit - ``offset`` + ``amplitude`` * (h(g_fg) - h(g_bg)), where g_fg and g_bg
    are the refiner's narrow Gaussians of the distance to the nearest foreground and background
    click (its input channels 1 and 4; channel 0 is the logit) and h is GELU applied twice (one
    hidden unit passes each Gaussian through both inner convolutions' centre taps). Near a
    foreground click the object is there, near a background click and far from every click it
    is not (an untrained logit is a few units, well under ``offset``)."""
    import torch

    from unimed.networks.unimednet import unimed_tiny

    torch.manual_seed(0)
    model = unimed_tiny()
    first, inner, last = model.click_refiner.net[0], model.click_refiner.net[2], model.click_refiner.net[4]
    with torch.no_grad():
        for conv in (first, inner, last):
            conv.weight.zero_()
            conv.bias.zero_()
        first.weight[0, 1, 1, 1, 1] = 1.0  # hidden 0 <- narrow foreground Gaussian
        first.weight[1, 4, 1, 1, 1] = 1.0  # hidden 1 <- narrow background Gaussian
        inner.weight[0, 0, 1, 1, 1] = inner.weight[1, 1, 1, 1, 1] = 1.0
        last.weight[0, 0] = amplitude
        last.weight[0, 1] = -amplitude
        last.bias.fill_(-offset)
    return model


@pytest.fixture
def clicking_model():
    """A fresh :func:`make_clicking_model`."""
    return make_clicking_model()


@pytest.fixture(scope="session")
def clicking_checkpoint(tmp_path_factory) -> Path:
    """:func:`make_clicking_model` saved as a checkpoint."""
    from unimed.checkpoint import save_checkpoint

    return save_checkpoint(make_clicking_model(), tmp_path_factory.mktemp("clicking") / "unimed.pt", {"version": 1})


@pytest.fixture(scope="session")
def start_server():
    """:func:`monailabel_server`, for module-scoped server fixtures."""
    return monailabel_server


@contextlib.contextmanager
def sample_server(tmp_path_factory, conf: dict[str, str] | None = None,
                  env: dict[str, str] | None = None) -> Iterator[dict]:
    """:func:`monailabel_server` on a fresh copy of the sample datastore; the dict it yields
    also holds ``studies``, that copy's folder."""
    studies = tmp_path_factory.mktemp("datastore")
    shutil.copytree(SAMPLE, studies, dirs_exist_ok=True)
    with monailabel_server(studies, tmp_path_factory.mktemp("server"), conf=conf, env=env) as srv:
        yield {**srv, "studies": studies}


@pytest.fixture(scope="session")
def start_sample_server():
    """:func:`sample_server`, for module-scoped server fixtures."""
    return sample_server


def _train_and_wait(client, params: dict, seconds: float = 600) -> str:
    """Start ``POST /train/unimed`` with ``params`` through ``client`` (a ``MONAILabelClient``),
    wait until the run ends, check it is DONE, and return its log lines (``GET /train/``)."""
    import time

    client.train_start("unimed", params)
    deadline = time.time() + seconds
    while True:
        status = client.train_status()
        if status.get("status") in ("DONE", "ERROR") or time.time() > deadline:
            break
        time.sleep(2)
    details = "\n".join(status.get("details", []))
    assert status["status"] == "DONE", details[-3000:]
    return details


@pytest.fixture(scope="session")
def finished_training():
    """:func:`_train_and_wait`: a training run through the client, waited for and checked DONE."""
    return _train_and_wait


@pytest.fixture(scope="session")
def port_factory():
    """:func:`servers.monailabel_server.free_port`: a free TCP port on 127.0.0.1."""
    from servers.monailabel_server import free_port

    return free_port


@pytest.fixture(scope="session")
def pacs(sample, tmp_path_factory, port_factory):
    """A real Orthanc (skipped when not installed) holding the sample BraTS FLAIR converted to an
    MR series and, when ../shared is there, its CT series; ``series`` maps modality ->
    SeriesInstanceUID."""
    from servers.orthanc import Orthanc, dicomweb_plugin, orthanc_binary, write_test_studies
    from unimed.dicom.series import read_series

    if orthanc_binary() is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    root = tmp_path_factory.mktemp("pacs")
    ct = SHARED_DATA / "totalseg_examples" / "example_ct_dicom"
    studies = write_test_studies(root / "studies", brats=sample / "brats_pat0001_flair.nii.gz",
                                 ct_dicom=ct if ct.is_dir() else None)
    with Orthanc(root / "orthanc", port=port_factory()) as orthanc:
        for files in studies.values():
            orthanc.upload(files)
        uids = {m: str(read_series(files[0].parent)[0].SeriesInstanceUID) for m, files in studies.items()}
        yield {"orthanc": orthanc, "series": uids, "studies": studies}


@pytest.fixture(scope="session")
def pacs_server(pacs, tmp_path_factory):
    """The UniMed MONAI Label server on the Orthanc of :func:`pacs` (DICOMweb datastore)."""
    work = tmp_path_factory.mktemp("pacs_server")
    with monailabel_server(pacs["orthanc"].dicomweb, work, env={"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(work / "cache")}) as srv:
        yield srv


#: fixtures that start a MONAI Label server, an Orthanc or a browser: a test using one is slow
SERVER_FIXTURES = {"start_server", "start_sample_server", "pacs", "pacs_server", "browser"}


def pytest_collection_modifyitems(items):
    """Mark every test that (through any fixture) starts a server as ``slow``, so the fast lane
    (``-m "not slow"``) leaves it out; other slow tests carry the mark themselves."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
