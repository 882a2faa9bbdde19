"""The segments a viewer names with a saved label (``label_info``): parsed, checked against the
served label space, kept in the label's info, read back by training (fast, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from unimed.label_growth import add_label
from unimed.labels import LabelRegistry
from unimed.networks.unimednet import unimed_tiny


@pytest.fixture
def segments(app_lib):
    import lib.datastore.segments as module

    return module


def _status(err) -> tuple[int, str]:
    return err.value.status_code, str(err.value)


def test_known_names_and_aliases_map_to_their_label_and_a_new_name_is_pending(segments):
    reg = LabelRegistry()
    got = segments.parse_label_info([{"name": "Oedema", "idx": 1},
                                     {"name": "Spinal cord", "idx": 2, "color": [0.5, 1.0, 0.0]},
                                     {"name": "necrosis", "idx": 3, "color": [9, 8, 7]}], reg)
    assert [(s.value, s.name, s.display, s.new) for s in got] == [
        (1, "edema", "Oedema", False), (2, "spinal_cord", "Spinal cord", True), (3, "necrosis", "necrosis", False)]
    assert got[0].color == (0, 255, 0)  # a known label without a colour takes the registry's
    assert got[1].color == (128, 255, 0) and got[2].color == (9, 8, 7)
    assert segments.parse_label_info(None, reg) == []
    assert segments.Segment.from_info(got[1].to_info()) == got[1]


@pytest.mark.parametrize("entries, status, message", [
    ({"name": "edema"}, 400, "'label_info' must be a list of segments"),
    ([{"idx": 1}], 400, "label_info[0] has no segment 'name'"),
    ([{"name": "x", "idx": 0}], 400, "must be a whole number in 1..255"),
    ([{"name": "x", "idx": 1.5}], 400, "must be a whole number in 1..255"),
    ([{"name": "x", "idx": True}], 400, "must be a whole number in 1..255"),
    ([{"name": "x", "idx": 1, "color": [1, 2]}], 400, "'color' must be 3 numbers"),
    ([{"name": "x", "idx": 1, "color": [1, 2, 300]}], 400, "must be in 0..255"),
    ([{"name": "? !", "idx": 1}], 422, "cannot become a label: a label name needs letters or digits"),
    ([{"name": "liver", "idx": 1}, {"name": "spleen", "idx": 1}], 422, "two segments of one value (1)"),
    ([{"name": "edema", "idx": 1}, {"name": "oedema", "idx": 2}], 422, "two segments of one label ('edema')"),
])
def test_a_label_info_the_server_cannot_use_is_refused_with_the_reason(segments, entries, status, message):
    from lib.datastore.errors import DatastoreRequestError

    with pytest.raises(DatastoreRequestError) as err:
        segments.parse_label_info(entries, LabelRegistry())
    assert _status(err)[0] == status and message in _status(err)[1], _status(err)


def test_values_present_are_named_segments_or_label_ids(segments):
    from lib.datastore.errors import DatastoreRequestError

    reg = LabelRegistry()
    named = segments.parse_label_info([{"name": "spinal cord", "idx": 1}, {"name": "empty one", "idx": 9}], reg)
    present = segments.segments_present(np.array([[0, 1], [2, 0]]), named, reg)
    assert [(s.value, s.name, s.new) for s in present] == [(1, "spinal_cord", True), (2, "edema", False)]
    with pytest.raises(DatastoreRequestError) as err:  # 17: no segment names it and no label has that id
        segments.segments_present(np.array([0, 1, 17]), named, reg)
    assert _status(err)[0] == 422 and "label value 17" in _status(err)[1] and "name the segment" in _status(err)[1]
    with pytest.raises(DatastoreRequestError) as err:  # platelet: a detection label cannot be a mask
        platelet = segments.parse_label_info([{"name": "platelet", "idx": 1}], reg)
        segments.segments_present(np.array([0, 1]), platelet, reg)
    assert _status(err)[0] == 422 and "segmentation labels only" in _status(err)[1]
    with pytest.raises(DatastoreRequestError):  # the same rule for a bare id
        segments.segments_present(np.array([0, 9]), [], reg)


def test_a_grown_registry_takes_its_taught_label_by_id_and_maps_segments_to_ids(segments):
    net = unimed_tiny()
    add_label(net, "spinal_cord", ["segmentation", "detection"])
    reg = net.registry
    assert [s.name for s in segments.segments_present(np.array([0, 12]), [], reg)] == ["spinal_cord"]
    named = segments.parse_label_info([{"name": "Spinal cord", "idx": 1}, {"name": "liver", "idx": 3}], reg)
    assert [s.new for s in named] == [False, True]
    lut = segments.value_lut(named, reg)
    assert lut[[0, 1, 2, 3]].tolist() == [0, 12, 2, 0]  # liver is not in this registry: background


def test_saved_segments_of_a_label_saved_without_label_info(segments):
    reg = LabelRegistry()
    assert [(s.value, s.name) for s in segments.saved_segments({"labels": ["edema", "gone"]}, reg)] == [(2, "edema")]
    kept = {"segments": [{"value": 1, "name": "liver", "display": "Liver", "color": [1, 2, 3], "new": True}]}
    assert segments.saved_segments(kept, reg)[0] == segments.Segment(1, "liver", "Liver", (1, 2, 3), True)


#: two cases of one label map (value 1 in one corner, 2 in another), their segments named apart
LABEL_INFOS = ([{"name": "Liver", "idx": 1, "color": [10, 20, 30]}, {"name": "edema", "idx": 2}],
               [{"name": "liver", "idx": 2}, {"name": "kidney", "idx": 1}])


def _label() -> np.ndarray:
    label = np.zeros((8, 8, 4), np.uint8)
    label[1:3, 1:3, 1] = 1
    label[5:7, 5:7, 2] = 2
    return label


def _store(folder, registry: LabelRegistry):
    """A datastore whose cases ``case0`` and ``case1`` were saved as a viewer saves them."""
    import nibabel as nib
    from lib.datastore.local import UniMedLocalDatastore

    store = UniMedLocalDatastore(folder / "store", auto_reload=False, registry=lambda: registry)
    for i, info in enumerate(LABEL_INFOS):
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), folder / f"case{i}.nii.gz")
        store.add_image(f"case{i}", str(folder / f"case{i}.nii.gz"), {})
        nib.save(nib.Nifti1Image(_label(), np.eye(4)), folder / f"label{i}.nii.gz")
        store.save_label(f"case{i}", str(folder / f"label{i}.nii.gz"), "final", {"label_info": info})
    return store


def test_pending_labels_and_counts_over_a_datastore(segments, tmp_path):
    import nibabel as nib

    reg = LabelRegistry()
    store = _store(tmp_path, reg)
    label = _label()
    saved = store.get_label_info("case0", "final")
    assert saved["labels"] == ["liver", "edema"] and saved["segments"][0]["new"] is True
    pending = segments.pending_labels(store, reg)
    assert [(p.name, p.display, p.color, p.cases) for p in pending] == [
        ("kidney", "kidney", None, (("case1", 1),)), ("liver", "Liver", (10, 20, 30), (("case0", 1), ("case1", 2)))]
    assert segments.label_case_counts(store, reg) == {"liver": 2, "edema": 1, "kidney": 1}
    # the saved file is the one sent, values as the viewer numbered them
    kept = np.asarray(nib.load(store.get_label_uri("case1", "final")).dataobj)
    assert np.array_equal(kept, label)


def test_training_reads_segments_as_the_served_labels_and_a_pending_label_as_its_structure(segments, tmp_path):
    from lib.trainers.unimed import datastore_samples, structure_samples

    net = unimed_tiny()
    store = _store(tmp_path, net.registry)
    add_label(net, "liver", ["segmentation"])  # taught since: id 12
    labelled, _ = datastore_samples(store, registry=net.registry)
    first, second = labelled
    assert first.seg_labels == ("edema", "liver") and second.seg_labels == ("liver",)
    label = _label()
    # case0: its value 1 is liver (now 12), 2 edema (registry id 2); case1: 2 is liver, 1 kidney (pending: background)
    assert np.array_equal(first.label_map, np.select([label == 1, label == 2], [12, 2], 0))
    assert np.array_equal(second.label_map, np.where(label == 2, 12, 0))
    kidney = next(p for p in segments.pending_labels(store, net.registry))
    (sample,) = structure_samples(store, kidney, 13)
    assert sample.seg_labels == ("kidney",) and np.array_equal(sample.label_map, np.where(label == 1, 13, 0))
