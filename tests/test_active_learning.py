"""Active learning end to end: strategies, background scoring per model version, a saved label
that retrains and serves a new version (through MONAILabelClient), and the al-sim command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable

import nibabel as nib
import numpy as np
import pytest

from unimed.selection import select_diverse, select_sampled, select_uncertain
from unimed.uncertainty import presence_entropy, segmentation_entropy

SCORE_KEY = "unimed_al"


# -- the measures (fast) ---------------------------------------------------------------------------
def test_segmentation_entropy_ranks_an_ambiguous_region_above_a_confident_image():
    confident = torch_logits(np.full((24, 24), 8.0))
    ambiguous = confident.clone()
    ambiguous[:, 8:16, 8:16] = 0.0  # a small 50/50 spot (11 % of the voxels) in a confidently empty patch
    assert segmentation_entropy(confident) == 0.0  # no voxel in doubt
    assert segmentation_entropy(ambiguous) > 0.9  # the region in doubt is the spot itself
    assert segmentation_entropy(ambiguous, region_threshold=1e-6) < 0.3  # a mean over every voxel hides it
    with pytest.raises(ValueError, match="region_threshold"):
        segmentation_entropy(confident, region_threshold=1.0)


def test_segmentation_entropy_does_not_grow_with_the_lesion():
    """A large lesion with a confident interior scores below a small one of the same doubtful
    boundary: the score measures doubt, not area (the fixed top-fraction mean it replaced ranked
    the large lesion first)."""
    def lesion(half: int) -> np.ndarray:
        margin = np.full((64, 64), 8.0)  # confidently background
        c = 32
        margin[c - half - 1 : c + half + 1, c - half - 1 : c + half + 1] = 0.0  # a one-voxel 50/50 rim
        margin[c - half : c + half, c - half : c + half] = -8.0  # a confident lesion inside
        return margin

    small, large = torch_logits(lesion(2)), torch_logits(lesion(20))
    assert segmentation_entropy(small) > segmentation_entropy(large) + 0.3


def torch_logits(background_margin: np.ndarray):
    import torch

    bg = torch.as_tensor(background_margin, dtype=torch.float32)[..., None]
    return torch.stack([bg, torch.zeros_like(bg)])


def test_presence_entropy_is_highest_at_fifty_fifty():
    import torch

    assert presence_entropy(torch.tensor([0.0])) == pytest.approx(1.0)
    assert presence_entropy(torch.tensor([6.0])) < presence_entropy(torch.tensor([1.0])) < 1.0


def test_diverse_selection_skips_near_duplicates_of_labelled_and_picked_images():
    emb = np.array([[0.0, 0.0], [0.0, 0.02], [4.0, 0.0], [0.0, 4.0]])
    u = np.array([0.9, 0.8, 0.5, 0.4])
    assert select_uncertain(u, 2) == [0, 1]
    assert select_diverse(u, emb, None, 2) == [0, 2]  # 1 duplicates the first pick
    assert select_diverse(u, emb, np.array([[4.0, 0.01]]), 2) == [0, 3]  # 2 duplicates a labelled image
    with pytest.raises(ValueError, match="NaN"):
        select_uncertain(np.array([np.nan]), 1)


def test_sampled_selection_draws_in_proportion_to_uncertainty_without_replacement():
    u = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    firsts = np.bincount([select_sampled(u, 1, np.random.default_rng(s))[0] for s in range(4000)], minlength=5)
    assert np.abs(firsts / 4000 - u / u.sum()).max() < 0.03  # P(first draw) = u / sum(u)
    assert firsts[4] == 0  # a certain image is never drawn while others are left
    picks = select_sampled(u, 5, np.random.default_rng(1))
    assert sorted(picks) == [0, 1, 2, 3, 4] and picks[-1] == 4
    # beta 0 draws uniformly, a large beta approaches the ranking
    uniform = np.bincount([select_sampled(u, 1, np.random.default_rng(s), beta=0.0)[0] for s in range(4000)], minlength=5)
    assert np.abs(uniform[:4] / 4000 - 0.25).max() < 0.03
    assert select_sampled(u, 2, np.random.default_rng(2), beta=200.0) == select_uncertain(u, 2)
    with pytest.raises(ValueError, match="uncertainty must be >= 0"):
        select_sampled(np.array([-0.1, 0.2]), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="beta must be >= 0, got -1"):
        select_sampled(u, 1, np.random.default_rng(0), beta=-1.0)


class _Datastore:
    """The few datastore calls the strategies make, over a dict of image infos."""

    def __init__(self, infos: dict[str, dict], labelled: set[str]):
        self.infos, self.labelled = infos, labelled

    def list_images(self):
        return list(self.infos)

    def get_unlabeled_images(self, label_tag=None, labels=None):
        return [i for i in self.infos if i not in self.labelled]

    def get_image_info(self, image_id):
        return self.infos[image_id]


def _info(u: float, emb: list[float], served_ago: float | None = None) -> dict:
    info: dict = {SCORE_KEY: {"uncertainty": u, "embedding": emb, "model": {"version": 1}}}
    if served_ago is not None:
        info["strategy"] = {name: {"ts": time.time() - served_ago} for name in ("diversity", "uncertainty", "uncertainty_sampled")}
    return info


def test_server_strategies_skip_recently_served_images_and_near_duplicates(app_lib):
    from lib.activelearning.strategies import UncertaintyStrategy

    infos = {"a": _info(0.9, [0.0, 0.0], served_ago=10), "b": _info(0.8, [0.0, 0.01]), "c": _info(0.5, [0.0, 5.0]),
             "d": _info(0.1, [5.0, 0.0])}
    store = _Datastore(infos, labelled={"d"})
    # "a" was just served (someone is labelling it): the most uncertain of the rest is "b" ...
    assert UncertaintyStrategy(pick="most")({"strategy": "uncertainty"}, store)["id"] == "b"
    # ... but "b" nearly duplicates "a", so the diversity-aware strategy serves "c"
    assert UncertaintyStrategy(pick="diverse")({"strategy": "diversity"}, store)["id"] == "c"
    # drawn in proportion to the uncertainty (0.8 : 0.5) among "b" and "c"; never "a" (served) or "d" (labelled)
    sampled = UncertaintyStrategy(pick="sampled", rng=np.random.default_rng(0))
    served = [sampled({"strategy": "uncertainty_sampled"}, store)["id"] for _ in range(2000)]
    assert set(served) == {"b", "c"}
    assert abs(served.count("b") / len(served) - 0.8 / 1.3) < 0.04
    # nothing scored yet: an unlabelled image is still served
    unscored = _Datastore({"x": {}, "y": {}}, labelled=set())
    for pick in ("most", "sampled", "diverse"):
        assert UncertaintyStrategy(pick=pick)({"strategy": "s"}, unscored) == {"id": "x", "uncertainty": None}
    with pytest.raises(ValueError, match="pick must be one of most, sampled, diverse, got 'top'"):
        UncertaintyStrategy(pick="top")


# -- the server ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory, start_sample_server):
    conf = {"max_size_3d": "64", "auto_train_labels": "1", "auto_train_minutes": "3"}
    with start_sample_server(tmp_path_factory, conf=conf) as srv:
        yield srv


def get_json(server: dict, path: str, **query: Any) -> Any:
    url = server["url"] + path + ("?" + urllib.parse.urlencode(query) if query else "")
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def wait_for(condition: Callable[[], Any], seconds: float, what: str, server: dict) -> Any:
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(2)
    pytest.fail(f"timed out waiting for {what}; server log tail:\n{server['log'].read_text()[-4000:]}")


def scores(server: dict) -> dict[str, dict]:
    images = server["client"].datastore()["objects"]
    return {i: get_json(server, "/datastore/image/info", image=i).get(SCORE_KEY) for i in images}


def served(server: dict) -> dict:
    return server["client"].info()["unimed"]


def all_scored_by_served_version(server: dict) -> bool:
    al = served(server)["active_learning"]
    return al["scored_by_served_version"] == al["images"]


def scoring_idle(server: dict) -> bool:
    """No scoring job running, and none queued to start (a ``next_sample`` queues one)."""
    try:
        get_json(server, "/scoring/", check_if_running="true")
        return False  # 200: a scoring job is running
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            return False
    try:
        jobs = get_json(server, "/scoring/", all="true")
    except urllib.error.HTTPError as exc:
        return exc.code == 404  # no scoring job was ever started
    return not any(job.get("status") in ("SUBMITTED", "RUNNING") for job in jobs)


def unlabelled(server: dict) -> set[str]:
    objects = server["client"].datastore()["objects"]
    return {i for i, o in objects.items() if "final" not in o.get("labels", {})}


def test_background_scoring_scores_every_image_with_the_served_version(server):
    wait_for(lambda: all_scored_by_served_version(server), 240, "the startup scoring", server)
    version = served(server)["version"]
    for image, s in scores(server).items():
        assert s["model"]["version"] == version, image
        assert 0.0 <= s["uncertainty"] <= 1.0
        assert len(s["embedding"]) == 128


@pytest.mark.parametrize("strategy", ["random", "first", "uncertainty", "uncertainty_sampled", "diversity"])
def test_each_strategy_serves_an_unlabelled_image(server, strategy):
    wait_for(lambda: all_scored_by_served_version(server), 240, "the startup scoring", server)
    open_images = unlabelled(server)
    result = server["client"].next_sample(strategy, {})
    assert result["id"] in open_images
    if strategy == "uncertainty":  # nothing was served by it before: the most uncertain image
        best = max(open_images, key=lambda i: scores(server)[i]["uncertainty"])
        assert result["id"] == best
        assert result["uncertainty"] == pytest.approx(scores(server)[best]["uncertainty"])


def test_scores_are_not_recomputed_for_the_same_version(server):
    wait_for(lambda: all_scored_by_served_version(server), 240, "the startup scoring", server)
    wait_for(lambda: scoring_idle(server), 240, "the background scoring to finish", server)
    before = scores(server)
    req = urllib.request.Request(server["url"] + "/scoring/unimed_uncertainty?run_sync=true", data=b"{}",
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        summary = json.loads(r.read())
    assert summary["executed"] == 0 and summary["skipped"] == summary["total"] == len(before)
    assert scores(server) == before  # same values, same timestamps


def _label_for(server: dict, image: str, tmp_path) -> str:
    src = nib.load(server["studies"] / f"{image}.nii.gz")
    label = np.zeros(src.shape[:3], dtype=np.uint8)
    x, y = label.shape[0] // 2, label.shape[1] // 2
    label[x - 6:x + 6, y - 6:y + 6] = 6  # lung_tumor
    path = tmp_path / f"{image}_label.nii.gz"
    nib.save(nib.Nifti1Image(label, src.affine), path)
    return str(path)


def test_a_saved_label_trains_a_new_version_that_infer_and_scoring_then_use(server, tmp_path):
    client = server["client"]
    wait_for(lambda: all_scored_by_served_version(server), 240, "the startup scoring", server)
    before = served(server)
    old_scores = scores(server)

    saved = client.save_label("lung_patch_001", _label_for(server, "lung_patch_001", tmp_path), tag="final")
    assert saved["auto_train"]["started"] is True, saved
    second = client.save_label("lung_patch_002", _label_for(server, "lung_patch_002", tmp_path), tag="final")
    assert second["auto_train"]["started"] is False
    assert "already running" in second["auto_train"]["reason"]
    assert len(get_json(server, "/train/", all="true")) == 1  # started once, not twice

    status = wait_for(lambda: (s := client.train_status()).get("status") in ("DONE", "ERROR") and s, 600,
                      "the label-triggered training", server)
    assert status["status"] == "DONE", "\n".join(status.get("details", []))[-3000:]

    after = served(server)
    assert after["version"] == (before["version"] or 0) + 1
    assert after["trained_at"] != before["trained_at"] and after["labels_until"] is not None
    meta = json.loads((server["model_dir"] / "versions" / f"v{after['version']:04d}.json").read_text())
    assert "lung_patch_001.nii.gz" in meta["labelled"]  # the saved label was in the run
    _, params = client.infer("unimed_seg", "lung_patch_000", {})
    params = params if isinstance(params, dict) else json.loads(params)
    assert params["model_version"] == after["version"]

    # the run ended by asking for scoring: every image is scored again, by the new version
    wait_for(lambda: all_scored_by_served_version(server), 300, "scoring by the new version", server)
    new_scores = scores(server)
    assert all(s["model"]["version"] == after["version"] for s in new_scores.values())
    assert all(new_scores[i]["ts"] >= old_scores[i]["ts"] for i in old_scores)
    assert any(new_scores[i]["uncertainty"] != old_scores[i]["uncertainty"] for i in old_scores)


# -- al-sim ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_al_sim_writes_well_formed_json(repo, shared_data, tmp_path):
    out, png = tmp_path / "al.json", tmp_path / "al.png"
    proc = subprocess.run(
        [sys.executable, str(repo / "main.py"), "al-sim", "--dataset", "msd_patches",
         "--data", str(shared_data / "msd_lung_patches"), "--strategy", "random,uncertainty,diversity",
         "--initial", "1", "--rounds", "2", "--per-round", "2", "--steps", "1", "--pool-size", "6", "--val-size", "3",
         "--threads", "1", "--no-progress", "--json", str(out), "--png", str(png)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dataset"] == "msd_patches" and result["metric"] == "dice"
    assert set(result["strategies"]) == {"random", "uncertainty", "diversity"}
    for curve in result["strategies"].values():
        assert [p["labels"] for p in curve] == [1, 3, 5]
        assert all(0.0 <= p["value"] <= 1.0 for p in curve)
    starts = {curve[0]["value"] for curve in result["strategies"].values()}
    assert len(starts) == 1  # one starting model for every strategy
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_al_sim_trains_with_the_consistency_loss_where_there_are_label_maps(repo, shared_data, tmp_path):
    out = tmp_path / "al.json"
    common = ["--strategy", "random", "--checkpoint", "scratch", "--initial", "2", "--rounds", "1", "--per-round", "2",
              "--steps", "2", "--pool-size", "6", "--val-size", "2", "--threads", "1", "--no-progress",
              "--ssl-loss", "consistency"]
    proc = subprocess.run(
        [sys.executable, str(repo / "main.py"), "al-sim", "--dataset", "msd_patches",
         "--data", str(shared_data / "msd_lung_patches"), *common, "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["config"]["ssl_loss"] == "consistency" and "ssl consistency" in proc.stdout
    assert [p["labels"] for p in result["strategies"]["random"]] == [2, 4]
    proc = subprocess.run(
        [sys.executable, str(repo / "main.py"), "al-sim", "--dataset", "medmnist",
         "--data", str(shared_data / "adrenalmnist3d"), *common],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the consistency loss trains segmentation outputs; medmnist has no label maps" in proc.stderr


@pytest.mark.slow
def test_al_sim_ranks_detection_images_by_their_query_entropy(repo, shared_data, tmp_path):
    """BCCD has boxes only: the pool is scored through the detection task's outputs."""
    out = tmp_path / "al.json"
    proc = subprocess.run(
        [sys.executable, str(repo / "main.py"), "al-sim", "--dataset", "voc", "--data", str(shared_data / "bccd"),
         "--strategy", "uncertainty,diversity", "--checkpoint", "scratch", "--initial", "1", "--rounds", "1",
         "--per-round", "2", "--steps", "1", "--pool-size", "4", "--val-size", "2", "--threads", "1", "--no-progress",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["metric"] == "map50" and result["pool"] == 4 and result["val"] == 2
    for curve in result["strategies"].values():
        assert [p["labels"] for p in curve] == [1, 3] and all(0.0 <= p["value"] <= 1.0 for p in curve)
    assert result["reach"] == {}  # no random curve to reach


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--strategy", "random,oracle"], "unknown strategies ['oracle']"),
    (["--rounds", "0"], "rounds must be >= 1"),
    (["--per-round", "500"], "fewer than initial + per_round = 0 + 500"),
    (["--device", "tpu"], "device 'tpu': use 'cpu', or 'cuda'/'cuda:N'"),
    (["--device", "cuda:99"], "device 'cuda:99': use 'cpu'"),
    (["--seeds", "0"], "--seeds and --jobs must be >= 1"),
    (["--checkpoint", "missing.pt"], "--checkpoint missing.pt: no such file"),
])
def test_al_sim_rejects_bad_arguments_in_one_line(repo, shared_data, args, message):
    proc = subprocess.run([sys.executable, str(repo / "main.py"), "al-sim", "--dataset", "msd_patches",
                           "--data", str(shared_data / "msd_lung_patches"), "--no-progress", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_al_sim_repeats_seeds_in_worker_processes_and_reports_their_mean(repo, shared_data, tmp_path):
    out = tmp_path / "al.json"
    proc = subprocess.run(
        [sys.executable, str(repo / "main.py"), "al-sim", "--dataset", "msd_patches",
         "--data", str(shared_data / "msd_lung_patches"), "--strategy", "random,uncertainty", "--checkpoint", "scratch",
         "--initial", "1", "--rounds", "1", "--per-round", "2", "--steps", "1", "--pool-size", "5", "--val-size", "3",
         "--seed", "3", "--seeds", "2", "--jobs", "2", "--threads", "1", "--no-progress", "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["seeds"] == [3, 4] and [r["config"]["seed"] for r in result["runs"]] == [3, 4]
    for name, curve in result["strategies"].items():
        assert [p["labels"] for p in curve] == [1, 3]
        for i, p in enumerate(curve):
            values = [r["strategies"][name][i]["value"] for r in result["runs"]]
            assert p["values"] == values
            assert p["value"] == pytest.approx(sum(values) / 2)
            assert p["sd"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    assert result["reach"]["target"] == result["strategies"]["random"][-1]["value"]
    assert "2 seeds" in proc.stdout and "reaches random's final" in proc.stdout


def test_labels_to_reach_finds_the_first_point_at_the_reference_final():
    from benchmarks.al_simulation import labels_to_reach

    curves = {"random": [{"labels": 10, "value": 0.4}, {"labels": 20, "value": 0.55}, {"labels": 30, "value": 0.6}],
              "uncertainty": [{"labels": 10, "value": 0.4}, {"labels": 20, "value": 0.61}, {"labels": 30, "value": 0.7}],
              "diversity": [{"labels": 10, "value": 0.4}, {"labels": 20, "value": 0.5}, {"labels": 30, "value": 0.59}]}
    reach = labels_to_reach(curves)
    assert reach["target"] == 0.6 and reach["reference_labels"] == 30
    assert reach["uncertainty"] == {"labels": 20, "share": pytest.approx(2 / 3, abs=1e-4)}
    assert reach["random"] == {"labels": 30, "share": 1.0}
    assert reach["diversity"] == {"labels": None, "share": None}
    assert labels_to_reach({"uncertainty": curves["uncertainty"]}) == {}


def test_combine_seeds_refuses_runs_that_do_not_line_up():
    from benchmarks.al_simulation import combine_seeds

    def run(seed, labels):
        return {"dataset": "msd_patches", "metric": "dice", "config": {"seed": seed}, "pool": 5, "val": 3,
                "seconds": 1.0, "strategies": {"random": [{"labels": n, "value": 0.5} for n in labels]}}

    with pytest.raises(ValueError, match="no runs"):
        combine_seeds([])
    with pytest.raises(ValueError, match="label counts differ"):
        combine_seeds([run(0, [1, 3]), run(1, [1, 4])])
    combined = combine_seeds([run(0, [1, 3]), run(1, [1, 3])])
    assert combined["strategies"]["random"][1] == {"labels": 3, "value": 0.5, "sd": 0.0, "values": [0.5, 0.5]}


def _seed_result(seed: int, value: float, *, ssl: bool = True, device: str = "cpu") -> dict[str, Any]:
    return {"dataset": "brats", "metric": "dice_wt", "pool": 3, "val": 1, "seconds": 2.0, "start": "scratch",
            "config": {"seed": seed, "ssl": ssl, "device": device, "rounds": 1},
            "strategies": {"random": [{"labels": 1, "value": value}, {"labels": 2, "value": value + 0.1}]}}


def test_merge_results_pools_seeds_that_ran_apart_in_seed_order():
    from benchmarks.al_simulation import combine_seeds, merge_results

    earlier = combine_seeds([_seed_result(0, 0.5), _seed_result(1, 0.7)])  # a multi-seed file
    merged = merge_results([_seed_result(3, 0.6, device="cuda"), earlier])
    assert merged["seeds"] == [0, 1, 3] and merged["devices"] == ["cpu", "cuda"]
    assert merged["strategies"]["random"][0]["values"] == [0.5, 0.7, 0.6]
    assert merged["strategies"]["random"][1]["value"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match=r"seeds given more than once: \[1\]"):
        merge_results([earlier, _seed_result(1, 0.4)])
    with pytest.raises(ValueError, match="seed 4 ran another simulation than seed 0: ssl differ"):
        merge_results([earlier, _seed_result(4, 0.4, ssl=False)])
    with pytest.raises(ValueError, match="no results"):
        merge_results([])


def test_merge_results_joins_strategies_of_one_seed_that_ran_apart():
    from benchmarks.al_simulation import merge_results

    def run(seed, strategies, start=0.5, **config):
        curves = {name: [{"labels": 1, "value": start}, {"labels": 2, "value": value}] for name, value in strategies.items()}
        return {"dataset": "brats", "metric": "dice_wt", "pool": 3, "val": 1, "seconds": 2.0, "start": "scratch",
                "config": {"seed": seed, "ssl": True, "ssl_loss": "reconstruction", "device": "cpu",
                           "strategies": list(strategies), **config},
                "strategies": curves}

    together = [run(0, {"random": 0.6, "uncertainty": 0.7}), run(1, {"random": 0.8, "uncertainty": 0.75})]
    apart = [run(0, {"uncertainty_sampled": 0.65}), run(1, {"uncertainty_sampled": 0.9})]
    merged = merge_results(apart + together)
    assert merged["seeds"] == [0, 1] and list(merged["strategies"]) == ["random", "uncertainty", "uncertainty_sampled"]
    assert merged["strategies"]["uncertainty_sampled"][1]["values"] == [0.65, 0.9]
    assert merged["reach"]["uncertainty_sampled"] == {"labels": 2, "share": 1.0}  # 0.775 >= random's 0.7
    assert merged["reach"]["uncertainty"] == {"labels": 2, "share": 1.0}
    assert merged["runs"][0]["seconds"] == 4.0
    with pytest.raises(ValueError, match="seed 0 holds the random curve more than once"):
        merge_results([run(0, {"random": 0.6, "uncertainty": 0.7}), run(0, {"random": 0.6, "diversity": 0.7})])
    with pytest.raises(ValueError, match=r"seeds given more than once: \[0\]"):
        merge_results([run(0, {"random": 0.6}), run(0, {"random": 0.6})])
    with pytest.raises(ValueError, match="seed 0: the strategies' curves start at different points"):
        merge_results([run(0, {"random": 0.6}), run(0, {"uncertainty": 0.6}, start=0.4)])
    old = run(0, {"random": 0.6})
    del old["config"]["ssl_loss"]  # written before --ssl-loss existed: reconstruction
    assert merge_results([old, run(0, {"uncertainty": 0.6}, ssl_loss="reconstruction")])["seeds"] == [0]
    with pytest.raises(ValueError, match="seed 0: runs of other strategies differ in their settings"):
        merge_results([run(0, {"random": 0.6}), run(0, {"uncertainty": 0.6}, ssl=False)])
    with pytest.raises(ValueError, match="seed 1 ran another simulation than seed 0: strategies differ"):
        merge_results(together[:1] + apart[:1] + together[1:])  # seed 1 lacks the sampled curve


def test_merge_results_reads_a_result_without_ssl_loss_as_reconstruction():
    from benchmarks.al_simulation import merge_results

    old = _seed_result(0, 0.5)  # written before --ssl-loss existed
    new = _seed_result(1, 0.6)
    new["config"]["ssl_loss"] = "reconstruction"
    assert merge_results([old, new])["seeds"] == [0, 1]
    new["config"]["ssl_loss"] = "consistency"
    with pytest.raises(ValueError, match="ssl_loss differ"):
        merge_results([old, new])


def test_paired_gain_compares_the_same_seeds_point_by_point():
    from benchmarks.al_simulation import combine_seeds, paired_gain

    on = combine_seeds([_seed_result(0, 0.50), _seed_result(1, 0.70), _seed_result(2, 0.60)])
    off = combine_seeds([_seed_result(0, 0.45), _seed_result(1, 0.72), _seed_result(5, 0.10)])
    first, second = paired_gain(on, off)
    assert first["seeds"] == 2 and first["gains"] == 1  # seeds 0 and 1 only; seed 1 loses
    assert first["gain"] == pytest.approx((0.05 - 0.02) / 2) and first["se"] == pytest.approx(0.035)
    assert first["result"] == pytest.approx(0.60) and first["baseline"] == pytest.approx(0.585)
    assert second["labels"] == 2 and second["gain"] == pytest.approx(first["gain"])
    with pytest.raises(ValueError, match=r"no seed in common: the result has \[0, 1, 2\], the baseline \[7\]"):
        paired_gain(on, _seed_result(7, 0.5))
    with pytest.raises(ValueError, match="no 'uncertainty' curve"):
        paired_gain(on, off, "uncertainty")
    other = _seed_result(0, 0.5)
    other["dataset"] = "msd_patches"
    with pytest.raises(ValueError, match="the result is on brats, the baseline on msd_patches"):
        paired_gain(on, other)
    twice = combine_seeds([_seed_result(0, 0.45), _seed_result(0, 0.55)])  # a later run of seed 0 must not win
    with pytest.raises(ValueError, match="the baseline holds seed 0 twice"):
        paired_gain(on, twice)


@pytest.mark.slow
def test_al_compare_prints_the_paired_table(repo, tmp_path):
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "cmp.json"
    a.write_text(json.dumps(_seed_result(0, 0.50)))
    b.write_text(json.dumps(_seed_result(0, 0.45)))
    proc = subprocess.run([sys.executable, str(repo / "main.py"), "al-compare", str(a), str(b), "--points",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| 1 | 0.500 | 0.450 | +5.0 ± 0.0 | 1 of 1 |" in proc.stdout
    assert json.loads(out.read_text())["points"][1]["gain"] == pytest.approx(0.05)
    proc = subprocess.run([sys.executable, str(repo / "main.py"), "al-compare", str(a), str(tmp_path / "none.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "none.json: no such file" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_al_combine_writes_the_merged_result_and_names_a_bad_file(repo, tmp_path):
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "merged.json"
    a.write_text(json.dumps(_seed_result(0, 0.5)))
    b.write_text(json.dumps(_seed_result(1, 0.7)))
    proc = subprocess.run([sys.executable, str(repo / "main.py"), "al-combine", str(a), str(b), "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["strategies"]["random"][0]["value"] == pytest.approx(0.6)
    assert "2 seeds" in proc.stdout
    (tmp_path / "bad.json").write_text("{\"strategies\": ")
    broken = _seed_result(2, 0.6)
    del broken["strategies"]["random"][1]["value"]
    (tmp_path / "broken.json").write_text(json.dumps({"strategies": {}, "config": {}, "runs": [broken]}))
    for bad, message in ((tmp_path / "missing.json", "missing.json: no such file"),
                         (tmp_path / "bad.json", "bad.json: not JSON"),
                         (tmp_path / "broken.json", "broken.json: not an al-sim result (run 0: the random curve is not"),
                         (repo / "requirements.txt", "not JSON")):
        proc = subprocess.run([sys.executable, str(repo / "main.py"), "al-combine", str(a), str(bad)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
