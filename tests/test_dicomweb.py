"""A real Orthanc PACS (Debian's orthanc + orthanc-dicomweb) behind the MONAI Label server:
CT and MR series listed, inferred on, answered as DICOM SEG, and a saved label stored back in
the PACS as a SEG of its series."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from servers.orthanc import dicomweb_plugin, orthanc_binary
from unimed.dicom.seg import read_seg
from unimed.dicom.series import read_series, series_geometry
from unimed.labels import LabelRegistry

NO_CT = "the CT series of ../shared/data/totalseg_examples is absent, so the PACS holds only the MR series"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(orthanc_binary() is None or dicomweb_plugin() is None,
                       reason="Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"),
]


@pytest.fixture(scope="module")
def server(pacs_server):
    return pacs_server


def _stats(server) -> dict:
    import requests

    return requests.get(f"{server['url']}/datastore/", timeout=60).json()


def test_both_modalities_are_listed(server, pacs):
    if "CT" not in pacs["series"]:
        pytest.skip(NO_CT)
    status = _stats(server)
    assert status["total"] == 2, status  # CT and MR; MONAI Label's default filter would list the CT only
    sample = server["client"].next_sample("random", {})  # the Slicer plugin's "Next Sample"
    assert sample["id"] in pacs["series"].values()


def test_infer_on_the_mr_series_answers_in_its_geometry(server, pacs, tmp_path):
    client = server["client"]
    mr = pacs["series"]["MR"]
    label, params = client.infer("unimed_seg", mr, {})
    import nibabel as nib

    out = nib.load(label)
    geometry = series_geometry(read_series(pacs["studies"]["MR"][0].parent))
    assert out.shape == geometry.shape and np.allclose(out.affine, geometry.affine, atol=1e-3)
    seg_file, params = client.infer("unimed_seg", mr, {"output": "dicom_seg"})
    seg = pydicom.dcmread(seg_file)
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == mr
    vol = read_seg(seg_file, source=pacs["studies"]["MR"][0].parent)
    assert np.array_equal(vol.label_map(LabelRegistry()), np.asarray(out.dataobj).astype(np.uint8))
    assert [s.tracking_id for s in vol.segments] == params["asked_labels"]


def test_ct_series_infers_through_the_stock_dicom_seg_output(server, pacs):
    """``?output=dicom_seg`` (the query MONAI Label documents) goes through UniMed's writer."""
    import requests

    if "CT" not in pacs["series"]:
        pytest.skip(NO_CT)
    ct = pacs["series"]["CT"]
    r = requests.post(f"{server['url']}/infer/unimed_seg", params={"image": ct, "output": "dicom_seg"},
                      data={"params": json.dumps({"labels": ["lung_tumor"], "label_info": [{"name": "lung_tumor"}]})},
                      timeout=600)
    assert r.status_code == 200, r.text[:500]
    path = server["log"].parent / "ct_seg.dcm"
    path.write_bytes(r.content)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ct
    assert [s.tracking_id for s in read_seg(path).segments] == ["lung_tumor"]


def test_saved_label_goes_back_to_the_pacs_as_a_seg(server, pacs, sample):
    import nibabel as nib

    mr = pacs["series"]["MR"]
    label_file = sample / "labels" / "final" / "brats_pat0001_flair.nii.gz"
    server["client"].save_label(mr, str(label_file), tag="final")
    segs = [s for s in pacs["orthanc"].series() if s["MainDicomTags"].get("Modality") == "SEG"]
    assert segs, "no SEG series in the PACS after saving a final label"
    instance = segs[-1]["Instances"][0]
    seg_file = server["log"].parent / "stored_seg.dcm"
    import urllib.request

    seg_file.write_bytes(urllib.request.urlopen(f"{pacs['orthanc'].url}/instances/{instance}/file").read())
    vol = read_seg(seg_file, source=pacs["studies"]["MR"][0].parent)
    assert vol.referenced_series == mr
    expected = np.asarray(nib.load(label_file).dataobj).astype(np.uint8)
    assert np.array_equal(vol.label_map(LabelRegistry()), expected)
    assert _stats(server)["completed"] == 1
    assert mr in server["client"].datastore()["objects"]  # the Slicer plugin's datastore call


def test_dicom_seg_output_of_a_non_dicom_request_is_a_400(server, pacs):
    from monailabel.client.client import MONAILabelClientException

    with pytest.raises(MONAILabelClientException) as err:
        server["client"].infer("unimed_det", pacs["series"]["MR"], {"output": "dicom_seg"})
    assert "Status: 400" in err.value.msg and "output 'dicom_seg' is for segmentation" in err.value.msg


def test_a_seg_in_the_pacs_becomes_a_training_label_of_registry_ids(server, pacs, tmp_path):
    """A SEG numbers its segments 1, 2, ...; training must see the registry's ids (lung_tumor = 6)."""
    import nibabel as nib
    import requests

    from unimed.dicom.seg import write_seg

    if "CT" not in pacs["series"]:
        pytest.skip(NO_CT)
    ct_dir = pacs["studies"]["CT"][0].parent
    geometry = series_geometry(read_series(ct_dir))
    label_map = np.zeros(geometry.shape, dtype=np.uint8)
    label_map[200:260, 220:300, 5:12] = LabelRegistry().get("lung_tumor").id
    pacs["orthanc"].upload([write_seg(label_map, geometry.affine, ct_dir, tmp_path / "ct_seg.dcm")])
    datalist = requests.get(f"{server['url']}/datastore/", params={"output": "train"}, timeout=300).json()
    ct_items = [d for d in datalist if pacs["series"]["CT"] in d["image"]]
    assert len(ct_items) == 1, datalist
    label = nib.load(ct_items[0]["label"])
    assert np.allclose(label.affine, geometry.affine, atol=1e-3)
    assert np.array_equal(np.asarray(label.dataobj), label_map)
