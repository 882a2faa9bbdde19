"""DICOM series and DICOM SEG: geometry against NIfTI and ITK, label-registry segments, and the
dcmqi fixtures read back against their NRRD masks."""

from __future__ import annotations

import numpy as np
import nibabel as nib
import pydicom
import pytest
from pydicom.sr._concepts_dict import concepts  # DICOM PS3.16's coded concepts, as pydicom ships them

from unimed.dicom.seg import SegError, dicom_lab_to_rgb, read_seg, rgb_to_dicom_lab, write_seg
from unimed.dicom.series import assign_missing_uids, dicom_source_of, read_series, series_geometry, volume_to_series
from unimed.labels import LabelRegistry, UnknownLabelError
from unimed.transforms import image_affine, load_image


@pytest.fixture(scope="module")
def brats(sample, tmp_path_factory):
    """The sample BraTS FLAIR as a DICOM MR series, with its NIfTI and expert label."""
    img = nib.load(sample / "brats_pat0001_flair.nii.gz")
    label = nib.load(sample / "labels" / "final" / "brats_pat0001_flair.nii.gz")
    folder = tmp_path_factory.mktemp("brats_mr")
    volume_to_series(np.asarray(img.dataobj), img.affine, folder, patient_id="brats_pat0001")
    return {"folder": folder, "nifti": img, "label": label}


@pytest.mark.slow
def test_brats_mr_series_has_the_niftis_geometry_and_intensities(brats):
    img = brats["nifti"]
    datasets = read_series(brats["folder"])
    assert len(datasets) == img.shape[2] and {ds.Modality for ds in datasets} == {"MR"}
    geometry = series_geometry(datasets)
    assert geometry.shape == img.shape
    assert np.allclose(geometry.affine, img.affine, atol=1e-4)
    itk = load_image(brats["folder"])  # an independent reader (ITK/GDCM) of the same files
    assert tuple(itk.shape[1:]) == img.shape
    assert np.allclose(image_affine(itk), img.affine, atol=1e-4)
    vol = np.asarray(img.dataobj)
    assert np.abs(np.asarray(itk[0]) - vol).max() <= (vol.max() - vol.min()) / 65000 + 1e-6


def test_volume_to_series_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="must be 3D"):
        volume_to_series(np.zeros((4, 4)), np.eye(4), tmp_path, patient_id="p")
    with pytest.raises(ValueError, match="4x4"):
        volume_to_series(np.zeros((4, 4, 2)), np.eye(3), tmp_path, patient_id="p")


@pytest.mark.slow
def test_anonymised_ct_gets_stable_identifiers_and_keeps_geometry(shared_data, tmp_path):
    src = shared_data / "totalseg_examples" / "example_ct_dicom"
    a = read_series(assign_missing_uids(src, tmp_path / "a", patient_id="ct")[0].parent)
    b = read_series(assign_missing_uids(src, tmp_path / "b", patient_id="ct")[0].parent)
    assert all(ds.StudyInstanceUID and ds.SeriesInstanceUID and ds.SOPInstanceUID and ds.PatientID for ds in a)
    assert len({ds.SOPInstanceUID for ds in a}) == len(a)
    assert [ds.SOPInstanceUID for ds in a] == [ds.SOPInstanceUID for ds in b] and a[0].StudyInstanceUID == b[0].StudyInstanceUID
    assert np.allclose(series_geometry(a).affine, image_affine(load_image(src)), atol=1e-4)


@pytest.mark.slow
def test_seg_round_trip_keeps_labels_colours_codes_and_geometry(brats, tmp_path):
    label = brats["label"]
    label_map = np.asarray(label.dataobj).astype(np.uint8)
    out = write_seg(label_map, label.affine, brats["folder"], tmp_path / "seg.dcm")
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == read_series(brats["folder"])[0].SeriesInstanceUID
    seg = read_seg(out, source=brats["folder"])
    registry = LabelRegistry()
    assert [s.tracking_id for s in seg.segments] == ["necrosis", "edema", "non_enhancing_tumor", "enhancing_tumor"]
    for s in seg.segments:
        lab = registry.get(s.tracking_id)
        assert s.label == lab.display and s.type == lab.type and s.category == lab.category
        assert np.abs(np.subtract(s.color, lab.color)).max() <= 2
    assert np.array_equal(seg.label_map(registry), label_map)
    assert np.allclose(seg.affine, label.affine)
    alone = read_seg(out)  # without the source: a grid through the non-empty frames, same world positions
    k0 = int(np.rint(np.linalg.solve(label.affine, alone.affine @ [0, 0, 0, 1])[2]))
    assert np.array_equal(alone.label_map(registry), label_map[:, :, k0:k0 + alone.masks.shape[3]])


@pytest.mark.slow
def test_seg_from_a_label_map_on_another_grid_is_resampled_onto_the_series(brats, tmp_path):
    label = brats["label"]
    label_map = np.asarray(label.dataobj).astype(np.uint8)
    flipped = label_map[::-1]  # the same labels, stored with the first axis reversed
    affine = label.affine @ np.array([[-1, 0, 0, label_map.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    out = write_seg(flipped, affine, brats["folder"], tmp_path / "seg.dcm")
    assert np.array_equal(read_seg(out, source=brats["folder"]).label_map(LabelRegistry()), label_map)


def test_seg_writer_errors_name_the_problem(brats, tmp_path):
    label = brats["label"]
    empty = np.zeros(label.shape, dtype=np.uint8)
    with pytest.raises(SegError, match="at least one segment"):
        write_seg(empty, label.affine, brats["folder"], tmp_path / "a.dcm")
    registry = LabelRegistry()
    out = write_seg(empty, label.affine, brats["folder"], tmp_path / "b.dcm", labels=[registry.get("edema")])
    assert read_seg(out).segments[0].tracking_id == "edema"  # an empty prediction still gives a valid SEG
    with pytest.raises(SegError, match="not among the segments"):
        write_seg(np.asarray(label.dataobj).astype(np.uint8), label.affine, brats["folder"], tmp_path / "c.dcm",
                  labels=[registry.get("edema")])
    with pytest.raises(SegError, match="not a DICOM Segmentation"):
        read_seg(sorted(brats["folder"].iterdir())[0])


@pytest.mark.parametrize(
    "seg, masks, source",
    [
        ("liver.dcm", {"Liver": ("liver_seg.nrrd", 1)}, True),
        ("partial_overlaps.dcm", {"ORANGE": ("partial_overlaps-2.nrrd", 2), "PURPLE": ("partial_overlaps-3.nrrd", 3),
                                  "GREEN": ("partial_overlaps-1.nrrd", 1), "DARK_BLUE": ("partial_overlaps-1.nrrd", 5)}, True),
        ("sparse-labelmap-noppv.dcm", {"Liver": ("sparse_labelmap_noppv_seg.nrrd", 1)}, False),
        ("sparse-labelmap-ppv5.dcm", {"Liver": ("sparse_labelmap_ppv5_seg.nrrd", 1)}, False),
    ],
)
def test_dcmqi_fixtures_read_back_as_their_nrrd_masks(shared_data, seg, masks, source):
    folder = shared_data / "dcmqi_seg"
    vol = read_seg(folder / seg, source=folder / "ct-3slice" if source else None)
    by_label = {s.label: m for s, m in zip(vol.segments, vol.masks)}
    for name, (nrrd, value) in masks.items():
        ref = load_image(folder / nrrd)
        assert np.allclose(vol.affine, image_affine(ref), atol=1e-3)
        assert np.array_equal(by_label[name], np.asarray(ref[0]) == value), name


def test_overlapping_or_unknown_segments_do_not_become_a_label_map_silently(shared_data):
    folder = shared_data / "dcmqi_seg"
    with pytest.raises(SegError, match="overlap"):
        read_seg(folder / "partial_overlaps.dcm").label_map()
    with pytest.raises(UnknownLabelError, match="'Liver'"):
        read_seg(folder / "liver.dcm").label_map(LabelRegistry())
    assert read_seg(folder / "liver.dcm").label_map({1: 7}).max() == 7


def test_sct_codes_of_the_registry_are_dicoms():
    dictionary: dict[str, set[str]] = {}
    for entry in concepts["SCT"].values():
        for value, (meaning, _) in entry.items():
            dictionary.setdefault(value, set()).add(meaning.lower())
    for lab in LabelRegistry():
        for code in filter(None, (lab.category, lab.type, lab.region)):
            assert code.scheme in ("SCT", "99UNIMED"), code
            if code.scheme == "SCT":
                assert code.meaning.lower() in dictionary.get(code.value, ()), (lab.name, code)


def test_cielab_round_trip():
    for rgb in [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 128, 0), (60, 60, 220)]:
        assert np.abs(np.subtract(dicom_lab_to_rgb(rgb_to_dicom_lab(rgb)), rgb)).max() <= 1


def test_dicom_source_of_finds_the_series_beside_a_converted_image(tmp_path):
    (tmp_path / "1.2.3").mkdir()
    (tmp_path / "1.2.3" / "x.dcm").write_bytes(b"x")
    (tmp_path / "1.2.3.nii.gz").write_bytes(b"x")
    (tmp_path / "other.nii.gz").write_bytes(b"x")
    assert dicom_source_of(tmp_path / "1.2.3.nii.gz") == tmp_path / "1.2.3"
    assert dicom_source_of(tmp_path / "1.2.3") == tmp_path / "1.2.3"
    assert dicom_source_of(tmp_path / "other.nii.gz") is None
