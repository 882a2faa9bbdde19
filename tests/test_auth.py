"""Safe on a network: login with roles through MONAI Label's auth contract (``main.py serve
--auth`` and its users file), the host check, CORS for configured origins only, checked model
replacement, no patient identifiers in the log, and SIGTERM that stops the whole server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from servers.auth_realm import LocalRealm
from servers.child_process import run_in_foreground
from servers.users import UserStore

REPO = Path(__file__).resolve().parents[1]
PASSWORDS = {"root": ("admin", "admin-password-1"), "rita": ("reviewer", "reviewer-password-1"),
             "anna": ("annotator", "annotator-password-1")}
ALLOWED_ORIGIN = "https://ohif.example.org"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "lib"), str(REPO)]))


def _main(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], input=stdin, capture_output=True, text=True,
                          env=_env(), cwd=REPO, timeout=120)


def _status(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict]:
    """Status and headers of a request, whatever the status."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"main.py serve exited with {proc.returncode}"
        try:
            _status(url)
            return
        except OSError:
            time.sleep(1)
    pytest.fail(f"{url} did not answer in {timeout} s")


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    """Running (a zombie no parent reaped yet does not count)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _serve(tmp: Path, port: int, *extra: str) -> subprocess.Popen:
    """``main.py serve`` on a copy of the sample datastore and of the shipped checkpoint."""
    studies, model = tmp / "datastore", tmp / "model" / "unimed.pt"
    shutil.copytree(REPO / "sample_datastore", studies)
    model.parent.mkdir(parents=True)
    shutil.copy(REPO / "apps" / "unimed" / "model" / "unimed.pt", model)
    cmd = [sys.executable, str(REPO / "main.py"), "serve", "--studies", str(studies), "--port", str(port),
           "--conf", "model_path", str(model), "--conf", "auto_train_labels", "0", *extra]
    return subprocess.Popen(cmd, stdout=open(tmp / "serve.log", "w"), stderr=subprocess.STDOUT, env=_env(), cwd=REPO)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the users file and the realm, in this process -------------------------------------------------
def test_users_file_holds_bcrypt_hashes_only(tmp_path):
    store = UserStore(tmp_path / "users.json")
    store.add("anna", "annotator", "annotator-password-1")
    text = (tmp_path / "users.json").read_text()
    assert "annotator-password-1" not in text and "$2b$" in text
    assert stat.S_IMODE((tmp_path / "users.json").stat().st_mode) == 0o600
    assert store.verify("anna", "annotator-password-1") == "annotator"
    assert store.verify("anna", "annotator-password-2") is None
    assert store.verify("nobody", "annotator-password-1") is None
    with pytest.raises(ValueError, match="at least 8"):
        store.add("bob", "user", "short")
    with pytest.raises(ValueError, match="must be one of"):
        store.add("bob", "superuser", "long-enough-1")
    with pytest.raises(ValueError, match="letters, digits"):
        store.add("../bob", "user", "long-enough-1")


def test_realm_tokens_carry_the_roles_monailabel_checks(tmp_path):
    import jwt

    store = UserStore(tmp_path / "users.json")
    store.add("rita", "reviewer", "reviewer-password-1")
    with LocalRealm(store, env={}) as realm:
        assert realm.issue("rita", "wrong-password") is None
        claims = realm.claims(realm.issue("rita", "reviewer-password-1"))
        token = realm.issue("rita", "reviewer-password-1")
        with pytest.raises(jwt.InvalidSignatureError):  # a key made up elsewhere does not pass
            LocalRealm(store, key_path=tmp_path / "other.pem", env={}).claims(token)
    assert claims["preferred_username"] == "rita"
    assert claims["realm_access"]["roles"] == ["monailabel-reviewer", "monailabel-annotator", "monailabel-user"]
    assert claims["exp"] > time.time() + 3600
    assert stat.S_IMODE((tmp_path / "signing_key.pem").stat().st_mode) == 0o600


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, signum):
    """run_in_foreground: SIGTERM or SIGINT (Ctrl-C) to this process stops the whole group,
    SIGKILL after the grace."""
    script = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              f"open({str(tmp_path / 'pid')!r}, 'w').write(str(subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(120)']).pid)); time.sleep(120)")
    runner = ("import sys; from servers.child_process import run_in_foreground; "
              f"sys.exit(run_in_foreground([sys.executable, '-c', {script!r}], grace=2) == -9 and 7 or 1)")
    proc = subprocess.Popen([sys.executable, "-c", runner], env=_env(), cwd=REPO)
    deadline = time.time() + 60
    while not (tmp_path / "pid").exists() or not (tmp_path / "pid").read_text():
        assert time.time() < deadline
        time.sleep(0.2)
    grandchild = int((tmp_path / "pid").read_text())
    started = time.time()
    proc.send_signal(signum)
    assert proc.wait(30) == 7  # the command ended by SIGKILL
    assert time.time() - started < 15
    time.sleep(0.5)
    assert not _alive(grandchild)


def test_run_in_foreground_returns_the_exit_status():
    assert run_in_foreground([sys.executable, "-c", "raise SystemExit(3)"]) == 3


# -- the command line ------------------------------------------------------------------------------
@pytest.mark.slow
def test_users_add_reads_the_password_from_stdin_and_stores_a_hash(tmp_path):
    users = tmp_path / "auth" / "users.json"
    done = _main("users", "add", "anna", "--role", "annotator", "--users", str(users), stdin="annotator-password-1\n")
    assert done.returncode == 0, done.stderr
    assert "annotator-password-1" not in users.read_text()
    assert UserStore(users).verify("anna", "annotator-password-1") == "annotator"
    assert "anna" in _main("users", "list", "--users", str(users)).stdout
    short = _main("users", "add", "bob", "--role", "user", "--users", str(users), stdin="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr


@pytest.mark.slow
@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20"])
def test_serve_refuses_a_network_host_without_auth(host, tmp_path):
    done = _main("serve", "--host", host, "--studies", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--auth" in done.stderr and "--insecure" in done.stderr


@pytest.mark.slow
def test_serve_auth_needs_an_admin_in_the_users_file(tmp_path):
    done = _main("serve", "--auth", "--users", str(tmp_path / "none.json"), "--studies", str(tmp_path))
    assert done.returncode == 2 and "users add" in done.stderr


# -- a real server with login ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, port_factory):
    """``main.py serve --auth`` with an admin, a reviewer and an annotator; one origin allowed."""
    from monailabel.client import MONAILabelClient

    tmp = tmp_path_factory.mktemp("auth_server")
    users = UserStore(tmp / "auth" / "users.json")
    for name, (role, password) in PASSWORDS.items():
        users.add(name, role, password)
    port = port_factory()
    proc = _serve(tmp, port, "--auth", "--users", str(users.path), "--cors-origin", ALLOWED_ORIGIN)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url + "/info/", proc)
        yield {"url": url, "tmp": tmp, "client": lambda: MONAILabelClient(url, tmpdir=str(tmp)), "proc": proc}
    finally:
        _stop(proc)


def _login(server, name: str):
    client = server["client"]()
    assert client.auth_enabled()
    client.update_auth(client.auth_token(name, PASSWORDS[name][1]))
    assert client.auth_valid_token()
    return client


def _error_status(call) -> int:
    from monailabel.client.client import MONAILabelClientException

    with pytest.raises(MONAILabelClientException) as info:
        call()
    if info.value.status_code is not None:
        return info.value.status_code
    return int(re.search(r"Status: (\d+)", info.value.msg)[1])  # train_start names it only in the message


@pytest.mark.slow
def test_anonymous_requests_get_401(auth_server):
    client = auth_server["client"]()
    assert _error_status(client.info) == 401
    assert _status(auth_server["url"] + "/datastore/?output=all")[0] == 401
    assert _status(auth_server["url"] + "/model/unimed", "DELETE")[0] == 401
    assert _status(auth_server["url"] + "/logs/")[0] == 401
    assert _status(auth_server["url"] + "/unimed/images")[0] == 401  # the app's own image listing
    assert _status(auth_server["url"] + "/reload", "POST")[0] == 401


@pytest.mark.slow
def test_a_wrong_password_is_refused_with_401(auth_server):
    client = auth_server["client"]()
    assert _error_status(lambda: client.auth_token("anna", "not-her-password")) == 401
    assert _error_status(lambda: client.auth_token("nobody", "not-her-password")) == 401
    forged = client.auth_token("anna", PASSWORDS["anna"][1])
    forged["access_token"] = forged["access_token"][:-4] + "AAAA"  # a tampered signature
    client.update_auth(forged)
    assert not client.auth_valid_token()
    assert _error_status(client.info) == 401


@pytest.mark.slow
def test_annotator_infers_and_saves_but_cannot_train_replace_delete_or_read_logs(auth_server):
    client = _login(auth_server, "anna")
    assert "unimed" in client.info()["models"]
    _, result = client.infer("unimed_cls", "bccd_BloodImage_00000", {})
    assert json.loads(result)["prediction"]
    label = REPO / "sample_datastore" / "labels" / "final" / "lung_patch_000.nii.gz"
    assert client.save_label("lung_patch_000", str(label), tag="final")["image"] == "lung_patch_000"
    assert _error_status(lambda: client.train_start("unimed", {"max_epochs": 1})) == 403
    bearer = {"Authorization": client._headers["Authorization"]}
    assert _status(auth_server["url"] + "/model/unimed", "DELETE", bearer)[0] == 403
    assert _status(auth_server["url"] + "/model/unimed", "PUT", bearer)[0] == 403
    assert _status(auth_server["url"] + "/logs/", headers=bearer)[0] == 403
    assert _status(auth_server["url"] + "/reload", "POST", bearer)[0] == 403


def _put_model(server, client, payload: bytes):
    import requests

    return requests.put(f"{server['url']}/model/unimed", files={"file": ("unimed.pt", payload)},
                        headers={"Authorization": client._headers["Authorization"]}, timeout=120)


def _served(client) -> dict:
    return client.info()["unimed"]


@pytest.mark.slow
def test_reviewer_replaces_the_model_only_with_a_checkpoint_of_the_same_network(auth_server, tmp_path):
    import torch

    from unimed.checkpoint import save_checkpoint
    from unimed.networks.unimednet import unimed_tiny

    client = _login(auth_server, "rita")
    before = _served(client)
    garbage = _put_model(auth_server, client, b"not a checkpoint at all")
    assert garbage.status_code == 422 and "served model is unchanged" in garbage.json()["detail"]
    other = save_checkpoint(unimed_tiny(), tmp_path / "tiny.pt", {"version": 9})
    foreign = _put_model(auth_server, client, other.read_bytes())
    assert foreign.status_code == 422 and "differs from the served one" in foreign.json()["detail"]
    torch.save({"format": "unimed-checkpoint/1", "config": {}, "state_dict": {}}, tmp_path / "empty.pt")
    assert _put_model(auth_server, client, (tmp_path / "empty.pt").read_bytes()).status_code == 422
    assert _served(client) == before and before["trained"]
    good = _put_model(auth_server, client, (auth_server["tmp"] / "model" / "unimed.pt").read_bytes())
    assert good.status_code == 200, good.text
    after = _served(client)
    assert after["trained"] and after["version"] == good.json()["version"] == before["version"] + 1
    # reviewers train (the checked route answers 422 for a bad body, not 403) but do not delete
    assert _error_status(lambda: client.train_start("unimed", {"max_epochs": "many"})) == 422
    bearer = {"Authorization": client._headers["Authorization"]}
    assert _status(auth_server["url"] + "/model/unimed", "DELETE", bearer)[0] == 403


@pytest.mark.slow
def test_admin_withdraws_a_version_but_never_leaves_untrained_weights(auth_server):
    import requests

    client = _login(auth_server, "root")
    assert _error_status(lambda: client.train_start("unimed", {"max_epochs": "many"})) == 422  # past the role check
    bearer = {"Authorization": client._headers["Authorization"]}
    assert _status(auth_server["url"] + "/logs/?text=true", headers=bearer)[0] == 200
    served = _served(client)["version"]
    while True:
        answer = requests.delete(f"{auth_server['url']}/model/unimed", headers=bearer, timeout=60)
        info = _served(client)
        assert info["trained"], "the server serves untrained weights"
        if answer.status_code == 409:
            assert "untrained" in answer.json()["detail"] and info["version"] == served
            break
        assert answer.status_code == 200 and info["version"] == answer.json()["served"] < served
        served = info["version"]


@pytest.mark.slow
def test_cors_only_for_the_configured_origin(auth_server):
    def allowed(origin: str) -> str | None:
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        return {k.lower(): v for k, v in _status(auth_server["url"] + "/infer/unimed", "OPTIONS", headers)[1].items()
                }.get("access-control-allow-origin")

    assert allowed(ALLOWED_ORIGIN) == ALLOWED_ORIGIN
    assert allowed("https://evil.example.com") is None


# -- SIGTERM ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_stops_the_server_and_its_children(tmp_path, port_factory):
    port = port_factory()
    proc = _serve(tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url + "/info/", proc)
        # with no --cors-origin no other origin may call it (MONAI Label's own default: any)
        headers = _status(url + "/info/", headers={"Origin": "https://evil.example.com", "Cookie": "a=b"})[1]
        assert "access-control-allow-origin" not in {k.lower() for k in headers}
        children = _children(proc.pid)
        assert children, "main.py serve started no server"
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        _stop(proc)
    alive = [pid for pid in children if _alive(pid)]
    assert not alive, f"still running after SIGTERM: {alive}"
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/info/", timeout=5)


# -- PACS: no patient identifiers in the log -------------------------------------------------------
def test_redaction_of_identifiers_in_log_messages(app_lib):
    from lib.log_redaction import redact

    message = redact("Info: {'PatientID': 'PAT-7', 'StudyInstanceUID': '1.2.840.1', 'Modality': 'SEG', "
                     "'00100010': {'vr': 'PN', 'Value': [{'Alphabetic': 'Doe^Jane'}]}} at /studies/1.2.840.1/series/9\n"
                     "(0010, 0010) Patient's Name    PN: 'Roe^Ann'\n(0008, 0060) Modality    CS: 'MR'")
    assert "PAT-7" not in message and "1.2.840.1" not in message and "Doe^Jane" not in message
    assert "Roe^Ann" not in message and "CS: 'MR'" in message
    assert "'Modality': 'SEG'" in message and "/series/9" in message


@pytest.mark.slow
def test_no_patient_id_in_the_log_after_a_pacs_label_save(pacs_server, pacs, sample):
    from unimed.dicom.series import read_series

    mr = pacs["series"]["MR"]
    first = read_series(pacs["studies"]["MR"][0].parent)[0]
    patient, study = str(first.PatientID), str(first.StudyInstanceUID)
    pacs_server["client"].save_label(mr, str(sample / "labels" / "final" / "brats_pat0001_flair.nii.gz"), tag="final")
    log = pacs_server["log"].read_text(errors="replace")
    assert "<redacted>" in log  # the save was logged, without its identifiers
    assert patient not in log
    assert study not in log
    # GET /logs serves the app folder's log, which every server from this checkout writes: this server's lines
    pid = re.search(r"\] \[(\d+)\] \[", log)[1]
    served = urllib.request.urlopen(pacs_server["url"] + "/logs/?text=true&lines=5000", timeout=30).read().decode()
    served_lines = [line for line in served.splitlines() if f"] [{pid}] [" in line]
    assert any("Saving Label" in line for line in served_lines)
    assert not [line for line in served_lines if patient in line or study in line]


def test_keep_published_stores_a_shipped_checkpoint_once(tmp_path):
    """An upload keeps the file served before it as a version, so that DELETE can return to it."""
    from unimed.checkpoint import save_checkpoint
    from unimed.model_store import ModelStore
    from unimed.networks.unimednet import unimed_tiny

    store = ModelStore(tmp_path)
    assert store.keep_published() is None  # nothing published
    save_checkpoint(unimed_tiny(), store.published, {"version": 3, "kind": "pretrain"})
    kept = store.keep_published()
    assert kept.number == 3 and kept.path.exists() and kept.meta["kind"] == "pretrain"
    assert store.keep_published() == kept and [v.number for v in store.versions()] == [3]
    assert store.publish(unimed_tiny(), {"kind": "upload"}).number == 4
    assert store.rollback(3).number == 3 and store.current_version() == 3
