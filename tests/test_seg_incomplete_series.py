"""A DICOM SEG of a series that lacks FrameOfReferenceUID or SliceThickness: what can be derived
is derived (deterministically); what cannot is named in a SegError (a 422 from the server)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from unimed.dicom.seg import SegError, complete_source_headers, read_seg, write_seg
from unimed.dicom.series import assign_missing_uids, read_series, series_geometry
from unimed.labels import LabelRegistry

pytestmark = pytest.mark.slow  # copies and rewrites a 20-slice CT series


@pytest.fixture(scope="module")
def ct_series(shared_data, tmp_path_factory):
    """The shared CT series with its identifiers assigned (as the PACS tests upload it)."""
    out = tmp_path_factory.mktemp("ct")
    assign_missing_uids(shared_data / "totalseg_examples" / "example_ct_dicom", out, patient_id="ct")
    return out


def _without(src, dst, *keywords):
    dst.mkdir()
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        for keyword in keywords:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(dst / f.name)
    return dst


def _label_map(folder):
    geometry = series_geometry(read_series(folder))
    label_map = np.zeros(geometry.shape, np.uint8)
    label_map[10:40, 20:60, 3:9] = LabelRegistry().get("edema").id
    return label_map, geometry


@pytest.mark.parametrize("missing", [("FrameOfReferenceUID",), ("SliceThickness",),
                                     ("FrameOfReferenceUID", "SliceThickness")])
def test_a_seg_is_written_with_what_the_series_lacks_derived(ct_series, tmp_path, missing):
    folder = _without(ct_series, tmp_path / "series", *missing)
    label_map, geometry = _label_map(folder)
    first = pydicom.dcmread(write_seg(label_map, geometry.affine, folder, tmp_path / "a.dcm"))
    again = pydicom.dcmread(write_seg(label_map, geometry.affine, folder, tmp_path / "b.dcm"))
    assert first.FrameOfReferenceUID == again.FrameOfReferenceUID  # derived deterministically
    if "FrameOfReferenceUID" in missing:
        assert first.FrameOfReferenceUID != read_series(ct_series)[0].FrameOfReferenceUID
    measures = first.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    spacing = float(np.linalg.norm(geometry.affine[:3, 2]))
    expected = spacing if "SliceThickness" in missing else float(read_series(ct_series)[0].SliceThickness)
    assert float(measures.SliceThickness) == pytest.approx(expected, rel=1e-5)
    assert np.array_equal(read_seg(tmp_path / "a.dcm", source=folder).label_map(LabelRegistry()), label_map)
    assert all("FrameOfReferenceUID" not in ds or not ds.FrameOfReferenceUID for ds in read_series(folder)) \
        == ("FrameOfReferenceUID" in missing)  # the source files are left as they were


def test_a_series_without_study_uid_gets_a_seg_error_naming_it(ct_series, tmp_path):
    folder = _without(ct_series, tmp_path / "series", "StudyInstanceUID")
    label_map, geometry = _label_map(folder)
    with pytest.raises(SegError, match="lacks StudyInstanceUID"):
        write_seg(label_map, geometry.affine, folder, tmp_path / "seg.dcm")


def test_complete_headers_copies_only_what_it_changes(ct_series):
    datasets = read_series(ct_series)
    assert all(a is b for a, b in zip(complete_source_headers(datasets, series_geometry(datasets)), datasets))
    del datasets[0].SliceThickness
    completed = complete_source_headers(datasets, series_geometry(datasets))
    assert completed[0] is not datasets[0] and "SliceThickness" not in datasets[0] and completed[0].SliceThickness
