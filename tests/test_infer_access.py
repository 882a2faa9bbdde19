"""What an infer request may read: datastore images and the file sent with it; server paths only
under conf ``infer_path_roots``; never a path chosen through ``params``; uploads kept private and
removed. A real server on a copy of the sample datastore."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests


@pytest.fixture(scope="module")
def outside(tmp_path_factory, sample) -> dict[str, Path]:
    """Files outside the datastore: one under the allowed root, one not."""
    root = tmp_path_factory.mktemp("allowed_root")
    other = tmp_path_factory.mktemp("not_allowed")
    for folder in (root, other):
        shutil.copy(sample / "lung_patch_000.nii.gz", folder / "patch.nii.gz")
    return {"root": root, "allowed": root / "patch.nii.gz", "other": other / "patch.nii.gz"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, start_sample_server, outside):
    with start_sample_server(tmp_path_factory, conf={"auto_train_labels": "0", "infer_path_roots": str(outside["root"])},
                             env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}) as srv:
        yield srv


def post(server, model: str, image: str = "", params: str = "{}", files=None) -> requests.Response:
    return requests.post(f"{server['url']}/infer/{model}", params={"image": image} if image else None,
                         data={"params": params}, files=files, timeout=300)


def _temp_listing() -> set[str]:
    return set(p.name for p in Path(tempfile.gettempdir()).iterdir())


def test_a_datastore_image_is_inferred(server):
    assert post(server, "unimed_seg", "lung_patch_000").status_code == 200


@pytest.mark.parametrize("which", ["other", "missing", "folder", "shadow"])
def test_server_paths_outside_the_roots_get_one_404(server, outside, which):
    image = {"other": str(outside["other"]), "missing": str(outside["other"].with_name("nope.nii.gz")),
             "folder": str(outside["other"].parent), "shadow": "/etc/shadow"}[which]
    r = post(server, "unimed_seg", image)
    assert r.status_code == 404, r.text
    assert r.json()["detail"] == f"image {image!r} is not in the datastore"  # the same words, existing or not


def test_a_server_path_under_a_configured_root_is_inferred(server, outside):
    assert post(server, "unimed_seg", str(outside["allowed"])).status_code == 200


@pytest.mark.parametrize("params, message", [
    ('{"image": "/etc/passwd"}', "params may not set 'image'"),
    ('{"model": "unimed_det"}', "params may not set 'model'"),
    ("[1, 2]", "params must be a JSON object"),
    ("{not json", "params is not valid JSON"),
])
def test_params_cannot_redirect_the_request(server, params, message):
    r = post(server, "unimed_seg", "lung_patch_000", params=params)
    assert r.status_code == 400 and message in r.json()["detail"]


def test_a_request_without_an_image_or_with_a_label_file_is_a_400(server):
    r = post(server, "unimed_seg")
    assert r.status_code == 400 and "no image" in r.json()["detail"]
    r = post(server, "unimed_seg", "lung_patch_000", files={"label": ("x.nii.gz", b"", "application/octet-stream")})
    assert r.status_code == 400 and "no label file" in r.json()["detail"]


def test_an_upload_is_inferred_and_leaves_no_file_behind(server, sample):
    app_uploads = Path(__file__).resolve().parents[1] / "apps" / "unimed" / ".uploads"
    before = _temp_listing()
    data = (sample / "lung_patch_000.nii.gz").read_bytes()
    ok = post(server, "unimed_seg", files={"file": ("patch.nii.gz", data, "application/octet-stream")})
    assert ok.status_code == 200, ok.text
    bad = post(server, "unimed_seg", files={"file": ("junk.nii.gz", b"not an image", "application/octet-stream")})
    assert bad.status_code == 422, bad.text
    assert list(app_uploads.iterdir()) == []  # removed on success and on failure
    assert not {n for n in _temp_listing() - before if n.endswith(".nii.gz")}  # nothing in the shared temp folder


def test_private_uploads_are_private_and_cleaned_at_start(tmp_path, app_lib):
    from lib.datastore.files import UPLOAD_PREFIX, UPLOADS_DIR
    from lib.infers.image_access import PrivateUploads

    dead = subprocess.Popen(["true"])  # a server that died mid-request left its upload
    dead.wait()
    folder = tmp_path / UPLOADS_DIR
    folder.mkdir()
    leftover = folder / f"{UPLOAD_PREFIX}{dead.pid}-x.nii.gz"
    leftover.write_bytes(b"x")
    uploads = PrivateUploads(tmp_path)
    assert list(folder.iterdir()) == []
    with uploads.receive(io.BytesIO(b"abc"), "a.nii.gz") as path:
        assert oct(folder.stat().st_mode & 0o777) == "0o700" and oct(path.stat().st_mode & 0o777) == "0o600"
        assert uploads.owns(str(path)) and not uploads.owns(str(tmp_path / "a.nii.gz"))
        assert not uploads.owns(path.name)  # a relative name is never an upload
    assert not path.exists()


def test_server_path_policy(tmp_path, app_lib):
    from lib.infers.image_access import ServerPathPolicy

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "x.nii.gz").write_bytes(b"x")
    (tmp_path / "outside.nii.gz").write_bytes(b"x")
    (tmp_path / "root" / "link.nii.gz").symlink_to(tmp_path / "outside.nii.gz")
    policy = ServerPathPolicy([tmp_path / "root"])
    assert policy.allows(str(tmp_path / "root" / "x.nii.gz"))
    assert not policy.allows(str(tmp_path / "outside.nii.gz"))
    assert not policy.allows(str(tmp_path / "root" / "link.nii.gz"))  # a link out of the root is outside
    assert not policy.allows(str(tmp_path / "root" / ".." / "outside.nii.gz"))
    with pytest.raises(ValueError, match="must be absolute"):
        ServerPathPolicy(["relative/dir"])


@pytest.mark.parametrize("modalities, status, message", [
    ('"pet"', 400, "'modalities': unknown modality 'pet'; known: unknown, flair"),
    ('["ct", "flair"]', 400, "'modalities' names 2 channels; the image has 1"),
    ('"CT"', 200, None),
])
def test_the_modalities_param_is_checked(server, modalities, status, message):
    r = post(server, "unimed_seg", "lung_patch_000", params='{"modalities": %s}' % modalities)
    assert r.status_code == status, r.text
    if message:
        assert message in r.json()["detail"]
