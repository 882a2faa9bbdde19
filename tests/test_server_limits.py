"""A real server stays safe on a shared network: an image above conf ``max_voxels`` gets a 413
before its pixels are read, and ``GET /info`` answers within a second while inferences run."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

pytestmark = pytest.mark.slow

#: the limit the server below runs with: the sample CT (370k voxels) passes, a BraTS FLAIR (8.9M) does not
MAX_VOXELS = 1_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, start_sample_server):
    with start_sample_server(tmp_path_factory, conf={"auto_train_labels": "0", "max_voxels": str(MAX_VOXELS)},
                             env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}) as srv:
        yield srv


def test_a_datastore_image_above_the_voxel_limit_gets_413_naming_the_limit(server):
    with pytest.raises(MONAILabelClientException) as err:
        server["client"].infer("unimed_seg", "brats_pat0001_flair", {})
    assert "Status: 413" in err.value.msg and str(MAX_VOXELS) in err.value.msg and "max_voxels" in err.value.msg


def test_an_upload_above_the_voxel_limit_gets_413_and_one_below_it_an_answer(server, tmp_path):
    big = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((128, 128, 64), np.int16), np.eye(4)), big)  # 1.05M voxels, a tiny file
    with pytest.raises(MONAILabelClientException) as err:
        server["client"].infer("unimed_seg", "", {}, file=str(big))
    assert "Status: 413" in err.value.msg and "1048576 voxels" in err.value.msg
    out, _ = server["client"].infer("unimed_seg", "ct_abdomen_3mm", {})
    assert nib.load(out).shape == (122, 101, 30)


def test_info_answers_within_a_second_while_eight_clients_infer(server, sample, tmp_path):
    url = server["url"]
    upload = str(sample / "ct_abdomen_3mm.nii.gz")  # each upload is a new file: no cached features
    errors: list[str] = []
    done = threading.Event()

    def client(i: int) -> None:
        api = MONAILabelClient(url, tmpdir=str(tmp_path))
        for _ in range(2):
            try:
                api.infer(("unimed_seg", "unimed_det", "unimed_cls")[i % 3], "", {}, file=upload)
            except MONAILabelClientException as exc:
                errors.append(str(exc.msg))

    latencies: list[float] = []

    def probe() -> None:
        while not done.is_set() and len(latencies) < 300:
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"{url}/info/", timeout=30) as res:
                assert json.loads(res.read())["name"] == "UniMed"
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.2)

    clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    prober = threading.Thread(target=probe)
    for t in clients:
        t.start()
    prober.start()
    for t in clients:
        t.join(timeout=600)
    done.set()
    prober.join(timeout=60)
    assert not errors
    assert len(latencies) >= 5
    assert float(np.percentile(latencies, 95)) < 1.0, sorted(latencies)[-5:]
