"""``unimed_interactive`` on a real MONAI Label server, through MONAILabelClient (the class the 3D
Slicer plugin calls): both click formats the stock plugins send, a box, bad points, and a
checkpoint without clicks.

The served checkpoint is ``unimed_tiny()`` with its click refiner set by hand
(``make_clicking_model`` in conftest: the object is there near a foreground click and not near a
background click), so these tests check the plumbing (voxel indices in, label map of the image's
geometry out), not accuracy.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from monailabel.client.client import MONAILabelClientException

from unimed.labels import LabelRegistry

pytestmark = pytest.mark.slow

MODEL = "unimed_interactive"
IMAGE = "volume"
SHAPE = (40, 36, 24)
AFFINE = np.array([[0.0, -1.5, 0.0, 30.0], [1.2, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0.0, 0.0, 0.0, 1.0]])
P, Q, FAR = (20, 18, 12), (22, 18, 12), (3, 3, 3)
EDEMA = LabelRegistry().get("edema").id


@pytest.fixture(scope="module")
def server(tmp_path_factory, start_server, clicking_checkpoint):
    studies = tmp_path_factory.mktemp("click_datastore")
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(image, AFFINE), str(studies / f"{IMAGE}.nii.gz"))
    nib.save(nib.Nifti1Image(image[:, :, 0], np.eye(4)), str(studies / "picture.nii.gz"))  # a 2D image
    with start_server(studies, tmp_path_factory.mktemp("click_server"), checkpoint=clicking_checkpoint,
                      conf={"auto_train_labels": "0", "max_size_3d": "64"},
                      env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}) as srv:
        yield {**srv, "studies": studies}


def infer(server, params: dict) -> tuple[np.ndarray, dict]:
    """The label map (checked to have the image's geometry) and the result params of a click request."""
    path, result = server["client"].infer(MODEL, IMAGE, params)
    result = result if isinstance(result, dict) else json.loads(result)
    out = nib.load(path)
    assert out.shape == SHAPE
    assert np.allclose(out.affine, AFFINE)
    return np.asarray(out.dataobj), result


def test_info_lists_the_click_model_as_deepedit(server):
    info = server["client"].info()
    model = info["models"][MODEL]
    assert model["type"] == "deepedit"
    assert model["labels"]["background"] == 0 and model["labels"]["edema"] == EDEMA
    assert "red_blood_cell" not in model["labels"]  # detection only: nothing to segment
    assert model["clicks"] is True and info["unimed"]["clicks"] is True
    assert model["boundary_refinement"] is True  # the app's default (conf boundary_refinement)


def test_deepedit_format_a_foreground_click_grows_the_label_there(server):
    before, _ = infer(server, {"label": "edema", "edema": [], "necrosis": [], "background": [list(FAR)]})
    after, result = infer(server, {"label": "edema", "edema": [list(P)], "necrosis": [], "background": [list(FAR)]})
    assert before[P] == 0 and after[P] == EDEMA
    assert (after == EDEMA).sum() > (before == EDEMA).sum()
    assert set(np.unique(after)) <= {0, EDEMA}
    assert result["asked_labels"] == ["edema"]


def test_ohif_deepedit_request_without_a_label_key_segments_every_clicked_label(server):
    """OHIF's panel sends ``{"background": [], NAME: [...]}`` for each label with clicks."""
    out, result = infer(server, {"background": [], "edema": [list(P)], "necrosis": [[8, 8, 6]]})
    necrosis = LabelRegistry().get("necrosis").id
    assert out[P] == EDEMA and out[8, 8, 6] == necrosis
    assert sorted(result["asked_labels"]) == ["edema", "necrosis"]


def test_foreground_format_class_agnostic_and_a_background_click_removes_the_object(server):
    grown, result = infer(server, {"foreground": [list(P)], "background": []})
    assert result["asked_labels"] == ["object"]
    assert result["label_names"] == {"background": 0, "object": 1}  # what Slicer names the segment
    assert grown[P] == 1 and grown[Q] == 1
    cut, _ = infer(server, {"foreground": [list(P)], "background": [list(Q)]})
    assert cut[Q] == 0
    assert cut.sum() < grown.sum()


def test_a_further_click_costs_a_decode_only(server):
    """The backbone's features are cached per image (path and modification time)."""
    infer(server, {"foreground": [list(P)]})
    _, result = infer(server, {"foreground": [list(P)], "background": [list(FAR)]})
    assert result["seconds"]["encode"] < 0.05 < result["seconds"]["decode"] + 0.05


def test_a_2d_image_takes_i_j_points_and_a_viewers_i_j_0(server):
    for point in ([20, 18], [20, 18, 0]):
        path, _ = server["client"].infer(MODEL, "picture", {"foreground": [point], "box": [2, 2, 0, 30, 30, 0]})
        out = np.asarray(nib.load(path).dataobj)
        assert out.shape == SHAPE[:2] and out[20, 18] == 1


def test_a_box_is_taken(server):
    out, _ = infer(server, {"foreground": [list(P)], "box": [10, 10, 6, 30, 28, 18]})
    assert out[P] == 1


@pytest.mark.parametrize("params, message", [
    ({"foreground": [[40, 18, 12]]}, "outside the image"),
    ({"foreground": [[-1, 0, 0]]}, "outside the image"),
    ({"foreground": [[20, 18]]}, "3 numbers each"),
    ({"foreground": [[20, "a", 12]]}, "2 or 3 numbers"),
    ({"foreground": "20,18,12"}, "must be a list of points"),
    ({"label": "edema", "edema": [], "background": []}, "no click and no box"),
    ({"foreground": [], "background": [[1, 1, 1]]}, "at least one foreground click"),
    ({"foreground": [list(P)], "box": [1, 2, 3]}, "'box' must be"),
    ({"foreground": [list(P)], "box": [0, 0, 0, 50, 5, 5]}, "outside the image"),
    ({"label": "red_blood_cell", "red_blood_cell": [list(P)]}, "cannot be segmented"),
    ({"label": "/etc/passwd"}, "names a structure"),
])
def test_bad_points_are_a_400_naming_the_problem(server, params, message):
    with pytest.raises(MONAILabelClientException) as err:
        server["client"].infer(MODEL, IMAGE, params)
    assert "Status: 400" in err.value.msg and message in err.value.msg, err.value.msg


def test_a_checkpoint_without_clicks_is_a_409_and_info_says_so(server):
    """Runs last: it replaces the served checkpoint (the service reloads it by modification time)."""
    from unimed.checkpoint import save_checkpoint
    from unimed.networks.unimednet import unimed_tiny

    plain = unimed_tiny(clicks=False)
    assert plain.click_encoder is None
    save_checkpoint(plain, server["model_dir"] / "unimed.pt", {"version": 7})
    with pytest.raises(MONAILabelClientException) as err:
        server["client"].infer(MODEL, IMAGE, {"foreground": [list(P)]})
    assert "Status: 409" in err.value.msg and "not trained for clicks" in err.value.msg
    info = server["client"].info()
    assert info["unimed"]["clicks"] is False and info["models"][MODEL]["clicks"] is False
    label, _ = server["client"].infer("unimed_seg", IMAGE, {"labels": ["edema"]})  # the other models still serve
    assert nib.load(label).shape == SHAPE
