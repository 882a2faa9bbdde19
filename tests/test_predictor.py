"""The predictor and the composed decoder: outputs in the image's own space, cached features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimed.boxes import box_iou, nms
from unimed.composer import ComposedDecoder
from unimed.labels import Label, LabelRegistry
from unimed.networks.unimednet import unimed_tiny
from unimed.predictor import Prediction, Predictor
from unimed.tasks import Task
from unimed.tasks.detection import detection_tokens
from unimed.tasks.segmentation import segmentation_tokens
from unimed.tokens import DetectionAnnotation, TokenVocabulary
from unimed.transforms import GridSpec


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(unimed_tiny())


@pytest.fixture(scope="module")
def composer() -> ComposedDecoder:
    return ComposedDecoder(TokenVocabulary(LabelRegistry(), num_bins=64, num_mask_refs=16), score_threshold=0.5)


@pytest.mark.parametrize("shape", [(1, 37, 29, 11), (3, 50, 41)])
def test_segmentation_has_the_image_shape(predictor, shape):
    pred = predictor.predict(torch.rand(shape), "seg")
    assert pred.label_map().shape == shape[1:]
    assert set(np.unique(pred.label_map())) <= {0} | {lab.id for lab in pred.labels}


def test_every_task_answers_from_cached_features(predictor):
    image = torch.rand(1, 40, 40, 20)
    first = predictor.predict(image, "segmentation", key="img")
    for task in ("detection", "classification"):
        pred = predictor.predict(image, task, key="img")
        assert pred.seconds["encode"] < first.seconds["encode"]
    cls = predictor.predict(image, "cls", ["adrenal_hyperplasia", "brain_tumor"], key="img")
    assert sorted(cls.annotation.labels) == ["adrenal_hyperplasia", "brain_tumor"]
    assert cls.annotation.scores == sorted(cls.annotation.scores, reverse=True)


@pytest.mark.slow
def test_sliding_window_covers_a_grid_larger_than_the_window(monkeypatch):
    torch.manual_seed(0)
    predictor = Predictor(unimed_tiny(), roi_size_3d=48, spacing_3d=1.0)
    windows = []
    encode = predictor.model.encode
    monkeypatch.setattr(predictor.model, "encode", lambda x, m: windows.append(tuple(x.shape[2:])) or encode(x, m))
    pred = predictor.predict(torch.rand(1, 100, 90, 70), "seg")
    assert pred.spec.grid == (96, 96, 64)  # 1 mm voxels: the grid is not squeezed to the window
    assert len(windows) > 1 and set(windows) == {(48, 48, 48)}
    assert pred.label_map().shape == (100, 90, 70)


def test_a_wider_field_of_view_keeps_the_grid_voxel_size():
    """The same anatomy scanned with a larger field of view lands on the same grid voxel size
    (it was squeezed to the memory cap before, shrinking the anatomy by the ratio of the views)."""
    from monai.data import MetaTensor

    predictor = Predictor(unimed_tiny(), max_size_3d=64, spacing_3d=2.0)
    for side in (64, 96):  # mm across, at 1 mm voxels
        image = MetaTensor(torch.rand(1, side, side, 48), affine=torch.eye(4, dtype=torch.float64))
        _, spec = predictor.features(image)
        assert spec.grid[0] == side // 2  # 2 mm voxels whatever the view
    _, spec = predictor.features(MetaTensor(torch.rand(1, 200, 200, 48), affine=torch.eye(4, dtype=torch.float64)))
    assert spec.grid[0] == 64  # only the memory cap coarsens it


def test_segmentation_tokens_pick_the_winning_channel(composer):
    reg = composer.vocab.registry
    labels = [reg.get("necrosis"), reg.get("edema")]
    logits = torch.zeros(3, 4, 4, 1)
    logits[1, :2] = 5.0  # necrosis wins the first two rows
    logits[2, 3] = 5.0  # edema wins the last row
    seq = segmentation_tokens(composer.vocab, logits, labels)
    assert [composer.vocab.token_str(i) for i in seq.ids] == [
        "<seg>", "<label:necrosis>", "<mask:0>", "<label:edema>", "<mask:1>", "<eos>"]
    lm = composer.decode(seq).label_map[..., 0]
    assert lm.tolist() == [[1] * 4, [1] * 4, [0] * 4, [2] * 4]


def test_detection_keeps_confident_boxes_and_suppresses_duplicates(composer):
    reg = composer.vocab.registry
    labels = [reg.get("red_blood_cell"), reg.get("platelet")]
    logits = torch.full((4, len(reg) + 1), -10.0)
    logits[:, 0] = 0.0
    logits[0, reg.class_index("red_blood_cell")] = 10.0
    logits[1, reg.class_index("red_blood_cell")] = 8.0  # duplicate of query 0
    logits[2, reg.class_index("platelet")] = 9.0
    logits[3, reg.class_index("necrosis")] = 10.0  # not asked for
    boxes = torch.tensor([[0.1, 0.1, 0.0, 0.3, 0.3, 1.0], [0.11, 0.1, 0.0, 0.3, 0.31, 1.0],
                          [0.6, 0.6, 0.0, 0.7, 0.7, 1.0], [0.5, 0.5, 0.0, 0.9, 0.9, 1.0]])
    ann = composer.decode(detection_tokens(composer.vocab, logits, boxes, labels, composer.options, flat_depth=True))
    assert ann.labels == ["red_blood_cell", "platelet"]
    assert np.allclose(ann.boxes[0], [0.1, 0.1, 0.0, 0.3, 0.3, 1.0], atol=1 / 64)
    assert ann.scores[0] > ann.scores[1] > 0.5


def test_a_detection_score_is_shared_with_no_object_and_the_asked_labels_only(composer):
    """As in training: a label's probability is a softmax over "no object" and the asked labels,
    so a column not asked for (here necrosis, high on every query) takes nothing from it."""
    reg = composer.vocab.registry
    logits = torch.full((1, len(reg) + 1), -10.0)
    logits[0, 0], logits[0, reg.class_index("platelet")] = 0.0, 1.0
    logits[0, reg.class_index("necrosis")] = 5.0
    boxes = torch.tensor([[0.6, 0.6, 0.0, 0.7, 0.7, 1.0]])
    ann = composer.decode(detection_tokens(composer.vocab, logits, boxes, [reg.get("platelet")], composer.options,
                                           flat_depth=True))
    assert ann.labels == ["platelet"]
    assert ann.scores[0] == pytest.approx(torch.tensor([0.0, 1.0]).softmax(0)[1].item(), abs=1e-6)


def test_box_iou_and_nms():
    a = torch.tensor([[0.0, 0, 0, 2, 2, 2], [1.0, 0, 0, 3, 2, 2], [5.0, 5, 5, 6, 6, 6]])
    iou = box_iou(a, a)
    assert torch.allclose(iou[0, 1], torch.tensor(4 / 12))
    assert iou[0, 2] == 0
    assert nms(a, torch.tensor([0.9, 0.8, 0.7]), 0.3).tolist() == [0, 2]
    assert nms(a, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 1, 2]


def test_box_overlaps_equal_the_plain_formulas_on_random_boxes():
    """MONAI's IoU, GIoU and NMS (through unimed.boxes) give what the hand-written corner-box
    formulas gave, on normalised boxes down to 1e-6 volume and on inverted (empty) boxes."""
    from unimed.boxes import generalized_box_iou, paired_generalized_box_iou

    def plain(a, b):
        lo, hi = torch.maximum(a[:, None, :3], b[None, :, :3]), torch.minimum(a[:, None, 3:], b[None, :, 3:])
        inter = (hi - lo).clamp(min=0).prod(-1)
        vol = lambda x: (x[:, 3:] - x[:, :3]).clamp(min=0).prod(-1)  # noqa: E731
        union = vol(a)[:, None] + vol(b)[None, :] - inter
        hull = (torch.maximum(a[:, None, 3:], b[None, :, 3:]) - torch.minimum(a[:, None, :3], b[None, :, :3])).prod(-1)
        iou = inter / union.clamp(min=1e-12)
        return iou, iou - (hull - union) / hull.clamp(min=1e-12)

    def plain_nms(boxes, scores, threshold):
        keep, suppressed, iou = [], torch.zeros(len(boxes), dtype=torch.bool), plain(boxes, boxes)[0]
        for i in scores.argsort(descending=True).tolist():
            if not suppressed[i]:
                keep.append(i)
                suppressed |= iou[i] > threshold
        return keep

    g = torch.Generator().manual_seed(0)
    for size in (0.3, 0.01):
        for _ in range(50):
            lo_a, lo_b = torch.rand(8, 3, generator=g), torch.rand(6, 3, generator=g)
            a = torch.cat([lo_a, lo_a + size * torch.rand(8, 3, generator=g)], 1)
            b = torch.cat([lo_b, lo_b + size * torch.rand(6, 3, generator=g)], 1)
            b[0] = a[0]
            iou, giou = plain(a, b)
            assert torch.allclose(box_iou(a, b), iou, rtol=1e-6, atol=1e-7)
            assert torch.allclose(generalized_box_iou(a, b), giou, rtol=1e-6, atol=1e-7)
            assert torch.allclose(paired_generalized_box_iou(a[:6], b), giou.diagonal(), rtol=1e-6, atol=1e-7)
            scores = torch.rand(8, generator=g)
            for threshold in (0.1, 0.5):
                assert nms(a, scores, threshold).tolist() == plain_nms(a, scores, threshold)
    inverted = torch.tensor([[0.5, 0.5, 0.5, 0.4, 0.6, 0.6]])
    assert box_iou(inverted, torch.tensor([[0.0, 0, 0, 1, 1, 1]])).item() == 0.0


def test_resolved_labels_are_not_parsed_again(predictor, monkeypatch):
    labels = [predictor.model.registry.get("edema")]
    monkeypatch.setattr(predictor.model.registry, "resolve", lambda *a: pytest.fail("labels parsed again"))
    task, resolved = predictor.resolve(Task.SEGMENTATION, labels)
    assert task is Task.SEGMENTATION and resolved == labels and isinstance(resolved[0], Label)


def test_world_boxes_follow_the_affine():
    """A box in voxels maps through the affine into LPS millimetres (hand-computed)."""
    affine = np.array([[2.0, 0, 0, 10], [0, 3.0, 0, -20], [0, 0, 4.0, 5], [0, 0, 0, 1]])
    spec = GridSpec(shape=(10, 20, 5), spatial_ndim=3, affine=affine, grid=(16, 16, 16))
    # voxels x 1.5..5.5, y 3.5..7.5, z 0.5..2.5 in continuous index coordinates
    box = np.array([[0.2, 0.2, 0.2, 0.6, 0.4, 0.6]])
    pred = Prediction(Task.DETECTION, [], DetectionAnnotation(box, ["edema"], [0.9]), spec)
    assert np.allclose(pred.boxes_voxel(), [[1.5, 3.5, 0.5, 5.5, 7.5, 2.5]])
    # RAS x 13..21 -> LPS -21..-13 ; RAS y -9.5..2.5 -> LPS -2.5..9.5 ; z 7..15
    assert np.allclose(pred.boxes_world(), [[-17.0, 3.5, 11.0, 8.0, 12.0, 8.0]])


def test_unknown_task_and_label(predictor):
    from unimed.labels import UnknownLabelError
    from unimed.tasks import UnknownTaskError

    with pytest.raises(UnknownTaskError, match="banana"):
        predictor.predict(torch.rand(1, 16, 16), "banana")
    with pytest.raises(UnknownLabelError, match="not available for classification"):
        predictor.predict(torch.rand(1, 16, 16), "classification", ["edema"])
