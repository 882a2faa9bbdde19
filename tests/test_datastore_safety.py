"""The app's local datastore on a hospital network: path-safe, crash-safe, labels checked at save.

Unit tests drive :class:`lib.datastore.local.UniMedLocalDatastore` on small real NIfTI files;
the server tests send a corpus of hostile requests to a real server and check a sentinel
folder next to the datastore is untouched, and kill the server with SIGKILL during label
saves to check that no acknowledged label is lost.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unimed.datasets.datastore import read_datastore
from unimed.labels import LabelRegistry

REG = LabelRegistry()
EDEMA, LUNG = REG.get("edema").id, REG.get("lung_tumor").id
VOL_AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray = VOL_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def label_for(shape: tuple[int, ...], value: int = EDEMA, corner: int = 1) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[tuple(slice(corner, corner + 2) for _ in shape)] = value
    return label


def make_store(root: Path) -> Path:
    """A tiny datastore: ``vol`` (3D, labelled), ``other`` (3D) and ``flat`` (2D)."""
    rng = np.random.default_rng(0)
    write_nifti(root / "vol.nii.gz", rng.random((8, 8, 4)).astype(np.float32))
    write_nifti(root / "other.nii.gz", rng.random((8, 8, 4)).astype(np.float32))
    write_nifti(root / "flat.nii.gz", rng.random((12, 10)).astype(np.float32), np.eye(4))
    write_nifti(root / "labels" / "final" / "vol.nii.gz", label_for((8, 8, 4)))
    return root


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path, root_mtime: bool = True) -> dict[str, tuple]:
    """Every entry under ``folder`` (and the folder's own mtime): kind, mtime, size and content hash."""
    entries = {".": ("dir", folder.stat().st_mtime_ns if root_mtime else None)}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
        entries[str(p.relative_to(folder))] = (kind, st.st_mtime_ns, st.st_size,
                                               digest(p) if kind == "file" else os.readlink(p) if kind == "link" else None)
    return entries


@pytest.fixture
def ds(app_lib):
    """The app's datastore modules (imported with the app folder on the path)."""
    import lib.datastore.errors as errors
    import lib.datastore.files as files
    import lib.datastore.local as local
    import lib.datastore.names as names

    return {"local": local, "errors": errors, "names": names, "files": files}


def open_store(ds, root: Path):
    return ds["local"].UniMedLocalDatastore(root, auto_reload=False)


# -- ids and tags -----------------------------------------------------------------------------------
BAD_NAMES = ["", "/etc/passwd", "../x", "..", ".", ".hidden", "a/b", "a\\b", "a..b", "x" * 129, "a\nb", "a\rb",
             "tab\there", "nul\0byte"]


@pytest.mark.parametrize("value", BAD_NAMES)
def test_unsafe_names_are_refused_with_a_400(ds, value):
    with pytest.raises(ds["errors"].DatastoreRequestError) as err:
        ds["names"].check_name(value, "image id")
    assert err.value.status_code == 400 and "image id" in str(err.value)
    assert "\n" not in str(err.value) and "\0" not in str(err.value)


@pytest.mark.parametrize("value", ["brats_pat0001_flair", "case 01", "Fall-7.b", "x" * 128, "ünïcode"])
def test_safe_names_pass(ds, value):
    assert ds["names"].check_name(value) == value


# -- crash safety of the JSON ---------------------------------------------------------------------
def test_a_crash_between_write_and_rename_leaves_the_old_json(ds, tmp_path, monkeypatch):
    root = make_store(tmp_path / "store")
    store = open_store(ds, root)
    config = root / "datastore_v2.json"
    before = config.read_bytes()
    label = write_nifti(tmp_path / "up.nii.gz", label_for((8, 8, 4), LUNG))
    real_replace = os.replace

    def crash_on_json(src, dst):
        if str(dst).endswith("datastore_v2.json"):
            raise OSError("simulated crash before the rename")
        real_replace(src, dst)

    monkeypatch.setattr(ds["files"].os, "replace", crash_on_json)
    with pytest.raises(OSError, match="simulated crash"):
        store.save_label("other", str(label), "final", {})
    monkeypatch.undo()
    assert config.read_bytes() == before
    json.loads(before)
    assert not [p for p in root.rglob(".part-*")], "the failed write left its temporary file"
    # the label file reached the disk before the crash: the next start picks it up
    assert "other" in open_store(ds, root).get_labeled_images()


def test_leftovers_of_dead_writers_are_removed_at_start(ds, tmp_path):
    root = make_store(tmp_path / "store")
    open_store(ds, root)
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftovers = [root / f".part-{dead.pid}-abc", root / "labels" / "final" / f".part-{dead.pid}-def",
                 root / ".uploads" / f"upload-{dead.pid}-ghi.nii.gz"]
    live = root / ".uploads" / f"upload-{os.getppid()}-mine.nii.gz"  # a running process's upload stays
    for p in leftovers + [live]:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"patient data")
    open_store(ds, root)
    assert [p for p in leftovers if p.exists()] == [] and live.exists()


@pytest.mark.parametrize("content", [b"", b"{\"name\": \"x\", \"objects\": {", b"\x00" * 64])
def test_an_empty_or_corrupt_json_is_restored_from_its_backup(ds, tmp_path, content):
    root = make_store(tmp_path / "store")
    store = open_store(ds, root)
    store.save_label("other", str(write_nifti(tmp_path / "l.nii.gz", label_for((8, 8, 4), LUNG))), "final", {})
    store.update_image_info("flat", {"note": "kept"})  # the backup holds the state before this write
    config = root / "datastore_v2.json"
    assert (root / "datastore_v2.json.bak").is_file()
    config.write_bytes(content)
    again = open_store(ds, root)
    assert sorted(again.list_images()) == ["flat", "other", "vol"]
    assert sorted(again.get_labeled_images()) == ["other", "vol"]
    json.loads(config.read_bytes())


def test_a_corrupt_json_without_backup_is_rebuilt_from_the_files(ds, tmp_path):
    root = make_store(tmp_path / "store")
    open_store(ds, root)
    (root / "datastore_v2.json.bak").unlink(missing_ok=True)
    (root / "datastore_v2.json").write_bytes(b"")
    again = open_store(ds, root)
    assert sorted(again.list_images()) == ["flat", "other", "vol"] and again.get_labeled_images() == ["vol"]
    assert list(root.glob("datastore_v2.json.corrupt-*")), "the corrupt file is kept aside for inspection"


def test_a_json_replaced_by_another_process_is_reloaded(ds, tmp_path):
    """Training and scoring run in other processes and write the JSON by an atomic rename; the
    server's watcher must follow renames, not only in-place modifications."""
    root = make_store(tmp_path / "store")
    served = ds["local"].UniMedLocalDatastore(root, auto_reload=True)
    try:
        other = open_store(ds, root)
        other.update_image_info("flat", {"score": 7})
        other.save_label("other", str(write_nifti(tmp_path / "l.nii.gz", label_for((8, 8, 4)))), "final", {})
        deadline = time.time() + 10
        while time.time() < deadline and not (served.get_image_info("flat").get("score") == 7
                                              and "other" in served.get_labeled_images()):
            time.sleep(0.05)
        assert served.get_image_info("flat").get("score") == 7 and "other" in served.get_labeled_images()
    finally:
        served._observer.stop()


def test_unsafe_entries_of_an_old_json_are_ignored(ds, tmp_path):
    root = make_store(tmp_path / "store")
    open_store(ds, root)
    config = root / "datastore_v2.json"
    data = json.loads(config.read_text())
    data["objects"]["../../outside"] = {"image": {"ext": ".nii.gz", "info": {}}, "labels": {}}
    data["objects"]["vol"]["labels"]["../../tag"] = {"ext": ".nii.gz", "info": {}}
    config.write_text(json.dumps(data))
    store = open_store(ds, root)
    assert "../../outside" not in store.list_images() and store.get_image_uri("../../outside") == ""
    assert list(store.get_labels_by_image_id("vol")) == ["final"]


# -- labels checked at save -----------------------------------------------------------------------
BAD_LABELS = [
    ("vol", (8, 8, 3), EDEMA, VOL_AFFINE, "differs from the image's"),
    ("vol", (8, 8, 4), 200, VOL_AFFINE, "200 is not a registry label id"),
    ("vol", (8, 8), EDEMA, VOL_AFFINE, "2D label map cannot label a 3D image"),
    ("flat", (12, 10, 3), EDEMA, np.eye(4), "3D label map cannot label a 2D image"),
    ("vol", (8, 8, 4), EDEMA, np.diag([1.0, 1.0, 3.0, 1.0]), "affine differs"),
]


@pytest.mark.parametrize("image,shape,value,affine,message", BAD_LABELS)
def test_a_label_that_does_not_fit_is_refused_and_the_saved_one_kept(ds, tmp_path, image, shape, value, affine, message):
    root = make_store(tmp_path / "store")
    store = open_store(ds, root)
    good = write_nifti(tmp_path / "good.nii.gz", label_for((12, 10) if image == "flat" else (8, 8, 4), LUNG),
                       np.eye(4) if image == "flat" else VOL_AFFINE)
    store.save_label(image, str(good), "final", {})
    saved = root / "labels" / "final" / f"{image}.nii.gz"
    before = digest(saved)
    bad = write_nifti(tmp_path / "bad.nii.gz", label_for(shape, value), affine)
    with pytest.raises(ds["errors"].DatastoreRequestError, match=message) as err:
        store.save_label(image, str(bad), "final", {})
    assert err.value.status_code == 422 and str(tmp_path) not in str(err.value)
    assert digest(saved) == before and store.get_label_info(image, "final")["labels"] == ["lung_tumor"]


def test_non_integer_label_values_are_refused(ds, tmp_path):
    store = open_store(ds, make_store(tmp_path / "store"))
    bad = write_nifti(tmp_path / "bad.nii.gz", np.full((8, 8, 4), 0.5, np.float32))
    with pytest.raises(ds["errors"].DatastoreRequestError, match="integers"):
        store.save_label("vol", str(bad), "final", {})


def test_an_unreadable_upload_is_a_422_without_server_paths(ds, tmp_path):
    root = make_store(tmp_path / "store")
    store = open_store(ds, root)
    half = tmp_path / "half.nii.gz"
    half.write_bytes((root / "vol.nii.gz").read_bytes()[:200])
    for path in (half, tmp_path / "garbage.nii.gz"):
        if not path.exists():
            path.write_bytes(b"not an image at all")
        with pytest.raises(ds["errors"].DatastoreRequestError, match="not a readable image") as err:
            store.add_image("new_case", str(path), {})
        assert err.value.status_code == 422 and str(tmp_path) not in str(err.value)
    assert "new_case" not in store.list_images() and not (root / "new_case.nii.gz").exists()


def test_delete_unlinks_a_symlink_never_its_target(ds, tmp_path):
    root = make_store(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    target = shutil.copy(root / "other.nii.gz", outside / "victim.nii.gz")
    (root / "linked.nii.gz").symlink_to(target)
    store = open_store(ds, root)
    assert "linked" in store.list_images()
    store.remove_image("linked")
    assert Path(target).is_file() and not (root / "linked.nii.gz").exists() and "linked" not in store.list_images()


def test_a_labels_folder_that_leads_outside_is_refused(ds, tmp_path):
    root = make_store(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "labels" / "evil").symlink_to(outside, target_is_directory=True)
    store = open_store(ds, root)
    label = write_nifti(tmp_path / "l.nii.gz", label_for((8, 8, 4)))
    with pytest.raises(ds["errors"].DatastoreRequestError, match="outside the datastore"):
        store.save_label("other", str(label), "evil", {})
    assert list(outside.iterdir()) == []


# -- logs and messages ----------------------------------------------------------------------------
def test_control_characters_are_escaped_in_logs(app_lib):
    from lib.safe_text import EscapeControlCharacters, scrub_paths

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "Removing Image: %s", ("a\nFORGED LINE",), None)
    EscapeControlCharacters().filter(record)
    assert record.getMessage() == "Removing Image: a\\nFORGED LINE"
    assert scrub_paths("cannot read /srv/store/.uploads/upload-1.nii.gz (see /var/log/x.log)") == \
        "cannot read upload-1.nii.gz (see x.log)"


# -- training skips what it cannot use ------------------------------------------------------------
def test_training_data_skips_a_bad_image_or_label_with_the_reason(ds, tmp_path):
    from lib.trainers.unimed import datastore_samples

    root = make_store(tmp_path / "store")
    (root / "broken.nii.gz").write_bytes(b"truncated")
    write_nifti(root / "labels" / "final" / "other.nii.gz", label_for((8, 8, 2)))  # put there by hand, wrong shape
    store = open_store(ds, root)
    skipped: list[dict[str, str]] = []
    labelled, unlabelled = datastore_samples(store, skipped)
    assert [s.name for s in labelled] == ["vol.nii.gz"] and [s.name for s in unlabelled] == ["flat"]
    reasons = {s["image"]: s["reason"] for s in skipped}
    assert set(reasons) == {"broken", "other.nii.gz"} and "shape" in reasons["other.nii.gz"]
    assert str(root) not in json.dumps(skipped)
    skipped_lib: list[tuple[str, str]] = []
    labelled, _ = read_datastore(root, skipped=skipped_lib)
    assert [s.name for s in labelled] == ["vol"] and {n for n, _ in skipped_lib} == {"broken.nii.gz", "other.nii.gz"}


# -- a real server --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile(start_server, tmp_path_factory, sample):
    """A server on a copy of the sample datastore, a sentinel folder next to it (holding a file a
    datastore symlink points to), and a private TMPDIR for the server."""
    base = tmp_path_factory.mktemp("hostile")
    studies, sentinel, tmpdir = base / "studies", base / "sentinel", base / "tmp"
    shutil.copytree(sample, studies)
    sentinel.mkdir()
    tmpdir.mkdir()
    (sentinel / "a.txt").write_text("must not change")
    shutil.copy(studies / "lung_patch_002.nii.gz", sentinel / "victim.nii.gz")
    (studies / "linked.nii.gz").symlink_to(sentinel / "victim.nii.gz")
    with start_server(studies, base / "server", conf={"auto_train_labels": "0"}, env={"TMPDIR": str(tmpdir)}) as srv:
        yield {**srv, "studies": studies, "sentinel": sentinel, "tmpdir": tmpdir}


def _label_bytes(tmp: Path, shape, value=LUNG, affine=np.eye(4)) -> bytes:
    return write_nifti(tmp / f"l{random.random()}.nii.gz", label_for(shape, value), affine).read_bytes()


def test_a_corpus_of_hostile_requests_gets_4xx_and_touches_nothing_outside(hostile, tmp_path):
    import requests

    url, studies, sentinel = hostile["url"], hostile["studies"], hostile["sentinel"]
    image = (studies / "lung_patch_000.nii.gz").read_bytes()
    adrenal_affine = nib.load(str(studies / "adrenal_val_000.nii.gz")).affine
    good = _label_bytes(tmp_path, (48, 48))
    res = requests.put(f"{url}/datastore/label", params={"image": "lung_patch_001"},
                       files={"label": ("l.nii.gz", good)}, timeout=60)
    assert res.status_code == 200, res.text
    saved = studies / "labels" / "final" / "lung_patch_001.nii.gz"
    assert saved.read_bytes() == good

    def nifti(name: str, array: np.ndarray) -> bytes:
        return write_nifti(tmp_path / name, array, np.eye(4)).read_bytes()

    huge_header = nib.Nifti1Header()
    huge_header.set_data_shape((30000, 30000, 30000))  # 100 TB of voxels claimed, 64 bytes given
    huge = gzip.compress(huge_header.binaryblock + b"\x00" * 68)

    def put_image(params, name="x.nii.gz", data=image):
        return "PUT", "/datastore/image", params, {"file": (name, data)}

    def put_label(params, data=good):
        return "PUT", "/datastore/label", params, {"label": ("l.nii.gz", data)}

    corpus = [
        (put_image({"image": str(sentinel / "a.txt")}, name="x"), 400, "path separator"),
        (put_image({"image": "../sentinel/b"}), 400, "path separator"),
        (put_image({"image": ".."}), 400, "starts with '.'"),
        (put_image({"image": ""}), 400, "empty"),
        (put_image({}, name=".nii.gz"), 400, "empty"),
        (put_image({"image": "x" * 300}), 400, "at most 128"),
        (put_image({"image": "a\nFORGED-LOG-LINE"}), 400, "control character"),
        (put_image({"image": "garbage"}, data=b"\x1f\x8b not really gzip"), 422, "not a readable image"),
        (put_image({"image": "truncated"}, data=image[: len(image) // 2]), 422, "not a readable image"),
        (put_image({"image": "program"}, name="x.exe"), 415, "image suffix"),
        (put_image({"image": "empty"}, data=b""), 422, "not a readable image"),
        (put_image({"image": "four_d"}, data=nifti("t.nii.gz", np.zeros((8, 8, 8, 20), np.float32))), 422, "20 channels"),
        (put_image({"image": "complex"}, data=nifti("c.nii.gz", np.zeros((8, 8, 8), np.complex64))), 422,
         "not intensities"),
        (put_image({"image": "huge"}, data=huge), 422, "not a readable image"),
        (("PUT", "/datastore/image", {"image": "p"}, {"file": ("x.nii.gz", image), "params": (None, "{not json")}),
         400, "not valid JSON"),
        (("DELETE", "/datastore/image", {"id": str(sentinel / "victim.nii.gz")}, None), 400, "path separator"),
        (("DELETE", "/datastore/image", {"id": "b\nFORGED-LOG-LINE"}, None), 400, "control character"),
        (("DELETE", "/datastore/image", {"id": "no_such_image"}, None), 404, "no image"),
        (("DELETE", "/datastore/label", {"id": "lung_patch_001", "tag": "../../../sentinel"}, None), 400, "label tag"),
        (("DELETE", "/datastore/label", {"id": "lung_patch_002", "tag": "final"}, None), 404, "has no 'final' label"),
        (put_label({"image": "no_such_image"}), 404, "no image"),
        (put_label({"image": str(sentinel / "victim")}), 400, "path separator"),
        (put_label({"image": "lung_patch_001", "tag": "../../../sentinel/t"}), 400, "label tag"),
        (put_label({"image": "lung_patch_001", "tag": "x" * 300}), 400, "at most 128"),
        (put_label({"image": "lung_patch_001"}, data=_label_bytes(tmp_path, (40, 40))), 422, "differs from the image's"),
        (put_label({"image": "lung_patch_001"}, data=_label_bytes(tmp_path, (48, 48), 200)), 422, "200 is not a registry"),
        (put_label({"image": "adrenal_val_000"}, data=_label_bytes(tmp_path, (28, 28))), 422, "2D label map cannot label a 3D"),
        (put_label({"image": "lung_patch_001"}, data=_label_bytes(tmp_path, (48, 48, 3))), 422, "3D label map cannot label a 2D"),
        (put_label({"image": "adrenal_val_000"}, data=_label_bytes(tmp_path, (28, 28, 28), LUNG, adrenal_affine * 2)),
         422, "affine differs"),
        (put_label({"image": "lung_patch_001"}, data=b"garbage"), 422, "not a readable image"),
        (("PUT", "/datastore/image/info", {"image": "no_such_image"}, {"info": (None, "{}")}), 404, "no image"),
        (("GET", "/datastore/image", {"image": "/etc/passwd"}, None), 404, "NOT Found"),
    ]
    before, tmp_before = snapshot(sentinel), snapshot(hostile["tmpdir"], root_mtime=False)
    failures = []
    for (method, path, params, files), status, message in corpus:
        res = requests.request(method, url + path, params=params, files=files, timeout=60)
        detail = res.json().get("detail", "") if res.headers.get("content-type", "").startswith("application/json") else ""
        if res.status_code != status or message not in str(detail) or str(studies) in str(detail):
            failures.append((method, path, params, res.status_code, res.text[:300]))
        assert requests.get(f"{url}/info/", timeout=30).status_code == 200, "the server stopped serving"
    after = snapshot(sentinel)
    touched = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    print(f"\nhostile corpus: {len(corpus)} requests, {len(corpus) - len(failures)} answered with the expected 4xx, "
          f"{len(touched)} entries outside the datastore created, changed or deleted")
    assert failures == []
    assert touched == [], "something outside the datastore was created, changed or deleted"
    assert snapshot(hostile["tmpdir"], root_mtime=False) == tmp_before, "an upload was left in the server's temp folder"
    assert not any((studies / ".uploads").iterdir()), "an upload was left in the datastore"
    assert saved.read_bytes() == good, "a refused label replaced the saved one"
    log = Path(hostile["log"]).read_text(errors="replace")
    assert not any(line.startswith("FORGED-LOG-LINE") for line in log.splitlines())
    # a symlink in the datastore is removed, its target outside is not
    assert requests.delete(f"{url}/datastore/image", params={"id": "linked"}, timeout=30).status_code == 200
    assert not (studies / "linked.nii.gz").exists() and snapshot(sentinel) == before


def test_uploads_are_private_and_never_outlive_the_request(hostile):
    import requests

    image = (hostile["studies"] / "lung_patch_000.nii.gz").read_bytes()
    res = requests.put(f"{hostile['url']}/datastore/image", params={"image": "uploaded_case"},
                       files={"file": ("case.nii.gz", image)}, timeout=60)
    assert res.status_code == 200, res.text
    stored = hostile["studies"] / "uploaded_case.nii.gz"
    assert stored.read_bytes() == image and stat_mode(stored) == 0o600
    assert stat_mode(hostile["studies"] / ".uploads") == 0o700 and not any((hostile["studies"] / ".uploads").iterdir())


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# -- kill -9 during label saves -------------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_during_label_saves_loses_no_acknowledged_label(tmp_path, sample, repo):
    """``UNIMED_KILL_ROUNDS`` rounds (default 4, ~2 min on 2 busy cores; the acceptance figure
    is taken with 20): start the server, save labels from two threads,
    SIGKILL the server and its children at a random moment, then check the JSON on disk is valid
    and holds every acknowledged label with its content; the next start serves them."""
    import psutil
    import requests

    from servers.monailabel_server import ServerProcess

    rounds = int(os.environ.get("UNIMED_KILL_ROUNDS", "4"))
    rng = random.Random(17)
    studies = tmp_path / "studies"
    studies.mkdir()
    images = ["lung_patch_000", "lung_patch_001", "lung_patch_002", "adrenal_val_000"]
    for name in images:
        shutil.copy(sample / f"{name}.nii.gz", studies)
    variants = {}
    for name in images:
        img = nib.load(str(studies / f"{name}.nii.gz"))
        variants[name] = [_label_bytes(tmp_path, img.shape, LUNG if k % 2 else EDEMA, img.affine) for k in range(4)]
    model = tmp_path / "model" / "unimed.pt"
    model.parent.mkdir()
    shutil.copy(repo / "apps" / "unimed" / "model" / "unimed.pt", model)
    acked: dict[str, str] = {}  # image -> sha of its last acknowledged label
    in_flight: dict[str, set[str]] = {n: set() for n in images}  # sent, not acknowledged
    lost, invalid_json, mid_request, saves = 0, 0, 0, 0
    refused: list[str] = []  # a save answered with anything but 200 (none expected)
    t0 = time.time()
    for r in range(rounds):
        server = ServerProcess(app_dir=repo / "apps" / "unimed", studies=studies, model_path=model, timeout=120,
                               log_path=tmp_path / f"server{r}.log", conf={"auto_train_labels": "0"},
                               env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
        server.start()
        try:
            for name, sha in acked.items():  # the restarted server serves every acknowledged label
                res = requests.get(f"{server.url}/datastore/label", params={"label": name, "tag": "final"}, timeout=30)
                got = hashlib.sha256(res.content).hexdigest() if res.status_code == 200 else None
                lost += got not in {sha} | in_flight[name]
            stop, busy = threading.Event(), [0]

            def save_loop(names: list[str]) -> None:
                nonlocal saves
                while not stop.is_set():
                    name = rng.choice(names)
                    data = rng.choice(variants[name])
                    sha = hashlib.sha256(data).hexdigest()
                    in_flight[name].add(sha)
                    busy[0] += 1
                    try:
                        res = requests.put(f"{server.url}/datastore/label", params={"image": name},
                                           files={"label": ("l.nii.gz", data)}, timeout=30)
                    except requests.ConnectionError:
                        return
                    finally:
                        busy[0] -= 1
                    if res.status_code != 200:
                        refused.append(res.text[:300])
                        continue
                    acked[name], in_flight[name] = sha, set()
                    saves += 1

            threads = [threading.Thread(target=save_loop, args=(images[i::2],)) for i in range(2)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.5))
            mid_request += busy[0] > 0
            proc = psutil.Process(server.proc.pid)
            for p in proc.children(recursive=True) + [proc]:
                p.kill()
            server.proc.wait(30)
            stop.set()
            for t in threads:
                t.join(60)
        finally:
            server.stop()
        config = studies / "datastore_v2.json"
        try:
            objects = json.loads(config.read_bytes())["objects"]
        except (OSError, ValueError, KeyError):
            invalid_json += 1
            continue
        for name, sha in acked.items():
            entry = objects.get(name, {}).get("labels", {}).get("final")
            path = studies / "labels" / "final" / f"{name}.nii.gz"
            lost += not entry or not path.is_file() or digest(path) not in {sha} | in_flight[name]
    print(f"\nkill -9 during label saves: {rounds} rounds, {mid_request} killed mid-request, {saves} saves "
          f"acknowledged, {lost} acknowledged labels lost, {invalid_json} invalid JSON, {time.time() - t0:.0f} s")
    assert invalid_json == 0 and lost == 0 and refused == []
    assert saves >= rounds and mid_request >= rounds // 2, "the kills did not land during saves"
