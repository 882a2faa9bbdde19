"""Boundary refinement of click answers: the image's appearance moves the boundary where it
separates the object from its surroundings, and nowhere else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from unimed import predictor as predictor_module
from unimed.boundary_refinement import BoundaryRefinement, refine_object_logit, standardised_channels
from unimed.clicks import ClickPrompt
from unimed.networks.unimednet import unimed_tiny
from unimed.predictor import Predictor


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return ((grid - np.array(centre)) ** 2).sum(-1) <= radius ** 2


def _image(truth: np.ndarray, contrast: float, seed: int = 0) -> np.ndarray:
    """Two channels: the object ``contrast`` standard deviations of noise brighter in the first."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 1.0, (2,) + truth.shape)
    noise[0] += contrast * truth
    return noise.astype(np.float32)


def _logit_of(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 6.0, -6.0)


def test_a_distinct_object_gets_its_own_boundary_back():
    shape = (40, 40, 30)
    truth = _ball(shape, (20, 20, 15), 10)
    network = _ball(shape, (20, 20, 15), 7)  # three voxels too small all round
    features = standardised_channels(_image(truth, contrast=6.0))
    refined, report = refine_object_logit(_logit_of(network), features)
    before = int((network != truth).sum())
    after = int(((refined > 0) != truth).sum())
    assert report.auc > 0.9 and report.weight > 2.0  # the ring holds the missed rim: not quite separable
    assert after < 0.2 * before


def test_an_object_that_looks_like_its_surroundings_keeps_the_network_boundary():
    shape = (40, 40, 30)
    truth = _ball(shape, (20, 20, 15), 10)
    logit = _logit_of(_ball(shape, (20, 20, 15), 7))
    features = standardised_channels(_image(truth, contrast=0.0))  # the object is invisible
    refined, report = refine_object_logit(logit, features)
    assert report.auc < 0.85 and report.weight == 0.0
    assert np.array_equal(refined, logit)


def test_voxels_beyond_the_band_never_change():
    shape = (48, 48, 24)
    object_ = _ball(shape, (16, 16, 12), 6)
    far = _ball(shape, (38, 38, 12), 5)  # as bright as the object, 10+ voxels beyond the band
    features = standardised_channels(_image(object_ | far, contrast=6.0))
    config = BoundaryRefinement(band=4)
    logit = _logit_of(object_)
    refined, report = refine_object_logit(logit, features, config=config)
    assert report.weight > 0
    assert not (refined[far] > 0).any()
    distance = np.stack(np.nonzero(object_), 1)
    changed = np.stack(np.nonzero((refined > 0) != (logit > 0)), 1)
    if len(changed):  # every change lies within the band of the network's boundary
        gaps = np.sqrt(((changed[:, None] - distance[None]) ** 2).sum(-1)).min(1)
        assert gaps.max() <= config.band


def test_the_band_is_in_millimetres():
    shape = (48, 48, 24)
    object_ = _ball(shape, (16, 16, 12), 6)
    near = _ball(shape, (28, 16, 12), 4) & ~object_  # as bright, 2 to 6 voxels beyond the boundary
    features = standardised_channels(_image(object_ | near, contrast=6.0))
    logit = _logit_of(object_)
    one_mm, _ = refine_object_logit(logit, features, config=BoundaryRefinement(band=10))
    three_mm, report = refine_object_logit(logit, features, config=BoundaryRefinement(band=10), spacing=(3, 3, 3))
    assert report.weight > 0
    assert (one_mm[near] > 0).mean() > 0.5  # 10 voxels of 1 mm reach it
    grown = (three_mm > 0) & ~object_
    assert grown.any()
    depth = ndimage.distance_transform_edt(~object_, sampling=(3, 3, 3))
    assert depth[grown].max() <= 10.0  # 10 mm of 3 mm voxels: not beyond


def test_clicks_join_the_samples_of_their_class():
    shape = (32, 32, 16)
    truth = _ball(shape, (16, 16, 8), 6)
    features = standardised_channels(_image(truth, contrast=6.0))
    tiny = _logit_of(_ball(shape, (16, 16, 8), 1))  # too few sure voxels for a fit
    config = BoundaryRefinement(min_samples=60)
    refined, report = refine_object_logit(tiny, features, config=config)
    assert report.auc is None and np.array_equal(refined, tiny)
    _, report = refine_object_logit(tiny, features, foreground=[[16, 16, 8], [13, 16, 8], [19, 16, 8]], config=config)
    assert report.auc is not None  # the clicks' neighbourhoods made up the object's samples


def test_nothing_to_refine_and_shape_errors():
    features = standardised_channels(np.random.rand(1, 8, 8, 8).astype(np.float32))
    empty = np.full((8, 8, 8), -3.0)
    refined, report = refine_object_logit(empty, features)
    assert refined is empty and report.auc is None and report.weight == 0.0
    with pytest.raises(ValueError, match="spatial shape"):
        refine_object_logit(np.zeros((8, 8, 4)), features)
    with pytest.raises(ValueError, match="spacing"):
        refine_object_logit(np.zeros((8, 8, 8)), features, spacing=(1.0, 0.0, 1.0))


@pytest.mark.parametrize("kwargs, message", [
    ({"weight": -1.0}, "weight"), ({"band": 0}, "band"), ({"confident": 0.4}, "confident"),
    ({"auc_low": 0.9, "auc_high": 0.9}, "auc_low"), ({"min_samples": 10, "max_samples": 5}, "min_samples"),
])
def test_config_states_its_constraints(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BoundaryRefinement(**kwargs)


def test_standardised_channels_use_the_body_of_a_padded_image():
    image = np.zeros((1, 10, 10, 10), np.float32)
    image[0, 2:8, 2:8, 2:8] = np.arange(216, dtype=np.float32).reshape(6, 6, 6) + 100
    body = standardised_channels(image)[2:8, 2:8, 2:8, 0]
    assert abs(float(body.mean())) < 1e-4 and float(body.std()) == pytest.approx(1.0, abs=1e-3)


@pytest.fixture(scope="module")
def clicking() -> Predictor:
    torch.manual_seed(0)
    return unimed_tiny(clicks=True)


def test_predictor_refines_click_answers_at_the_image_resolution(clicking, monkeypatch):
    image = torch.from_numpy(_image(_ball((40, 36, 20), (20, 18, 10), 8), contrast=6.0))
    prompt = ClickPrompt.from_voxels((40, 36, 20), foreground=[[20, 18, 10]])
    plain = Predictor(clicking, boundary_refinement=None).predict_clicks(image, prompt)
    refined = Predictor(clicking).predict_clicks(image, prompt)
    assert plain.refinement is None
    assert refined.label_map().shape == plain.label_map().shape == (40, 36, 20)
    if (plain.label_map() > 0).any():
        assert refined.refinement is not None
    # logits too large to hold whole at the image's resolution: the network's answer, unrefined
    monkeypatch.setattr(predictor_module, "WHOLE_BYTES", 16)
    big = Predictor(clicking).predict_clicks(image, prompt)
    assert big.refinement is None
    assert np.array_equal(big.label_map(), plain.label_map())


def test_the_clicked_image_is_standardised_once_per_key(clicking, monkeypatch):
    calls = []

    def counting(image):
        calls.append(1)
        return standardised_channels(image)

    monkeypatch.setattr(predictor_module, "standardised_channels", counting)
    image = torch.from_numpy(_image(_ball((24, 24, 16), (12, 12, 8), 5), contrast=6.0))
    prompt = ClickPrompt.from_voxels((24, 24, 16), foreground=[[12, 12, 8]])
    predictor = Predictor(clicking)
    first = predictor.predict_clicks(image, prompt, key="a")
    again = predictor.predict_clicks(image, prompt.with_click(prompt.foreground[0], True), key="a")
    assert len(calls) == 1 and first.label_map().shape == again.label_map().shape
    predictor.predict_clicks(image, prompt)  # no key: nothing to keep it under
    predictor.predict_clicks(image, prompt, key="b")
    assert len(calls) == 3
    predictor.clear_cache()
    predictor.predict_clicks(image, prompt, key="b")
    assert len(calls) == 4
