"""Metrics: values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unimed.metrics import accuracy, box_iou, brats_regions, dice, mask_box, mean_ap, roc_auc, voc_ap


def test_dice_of_known_masks():
    pred = np.zeros((4, 4), bool)
    target = np.zeros((4, 4), bool)
    pred[0, :3] = True  # 3 voxels
    target[0, 2:4] = True  # 2 voxels, 1 shared
    assert dice(pred, target) == pytest.approx(2 * 1 / (3 + 2))
    assert dice(pred, pred) == 1.0
    assert dice(pred, ~pred) == 0.0
    assert dice(np.zeros(5, bool), np.zeros(5, bool)) == 1.0  # both empty
    assert dice(np.zeros(5, bool), np.ones(5, bool)) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros(3), np.zeros(4))


def test_brats_regions():
    r = brats_regions(np.array([[0, 1, 2], [3, 4, 0]]))
    assert r["wt"].tolist() == [[False, True, True], [True, True, False]]
    assert r["tc"].tolist() == [[False, True, False], [True, True, False]]
    assert r["et"].tolist() == [[False, False, False], [False, True, False]]


def test_roc_auc_of_a_known_ranking():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ranked right
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.1, 0.2, 0.3], [0, 1, 1]) == 1.0
    assert roc_auc([0.5, 0.5], [0, 1]) == 0.5  # a tie counts half
    with pytest.raises(ValueError, match="only one"):
        roc_auc([0.1, 0.9], [1, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([0.1, 0.9], [0, 2])


def test_accuracy():
    assert accuracy([0.2, 0.6, 0.5, 0.9], [0, 0, 1, 1]) == 0.75  # 0.5 counts as positive
    assert accuracy([0.2, 0.6], [0, 1], threshold=0.7) == 0.5
    with pytest.raises(ValueError, match="same length"):
        accuracy([0.2], [0, 1])


def test_box_iou_2d_and_3d():
    np.testing.assert_allclose(box_iou([[0, 0, 2, 2]], [[1, 0, 3, 2], [0, 0, 2, 2], [5, 5, 6, 6]]), [[1 / 3, 1, 0]])
    # cubes of side 2 overlapping in a unit cube: 1 / (8 + 8 - 1)
    np.testing.assert_allclose(box_iou([[0, 0, 0, 2, 2, 2]], [[1, 1, 1, 3, 3, 3]]), [[1 / 15]])
    assert box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    assert box_iou([[1, 1, 1, 1]], [[1, 1, 1, 1]])[0, 0] == 0.0  # an empty box
    with pytest.raises(ValueError, match="same dimensionality"):
        box_iou([[0, 0, 1, 1]], [[0, 0, 0, 1, 1, 1]])


def test_voc_ap_hand_built():
    gt = {"a": np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), "b": np.array([[0, 0, 10, 10]])}
    detections = [
        ("a", 0.6, [0, 0, 10, 10]),  # 4th: duplicate of a matched box -> FP
        ("a", 0.9, [0, 0, 10, 10]),  # 1st: TP
        ("b", 0.7, [0, 0, 10, 10]),  # 3rd: TP
        ("a", 0.8, [50, 50, 60, 60]),  # 2nd: FP
    ]
    # ranked: TP FP TP FP -> precision 1, 1/2, 2/3, 1/2; recall 1/3, 1/3, 2/3, 2/3 (3 GT boxes)
    # precision envelope: 1 up to recall 1/3, 2/3 up to recall 2/3, 0 beyond
    # AP = 1/3 * 1 + 1/3 * 2/3 = 5/9
    assert voc_ap(detections, gt) == pytest.approx(5 / 9)
    # 3D boxes give the same answer
    gt3 = {k: np.concatenate([v[:, :2], np.zeros((len(v), 1)), v[:, 2:], np.ones((len(v), 1))], 1) for k, v in gt.items()}
    det3 = [(i, s, [b[0], b[1], 0, b[2], b[3], 1]) for i, s, b in detections]
    assert voc_ap(det3, gt3) == pytest.approx(5 / 9)


def test_voc_ap_edge_cases():
    gt = {"a": np.array([[0, 0, 10, 10]]), "b": np.array([[0, 0, 4, 4]])}
    perfect = [("a", 0.3, [0, 0, 10, 10]), ("b", 0.2, [0, 0, 4, 4])]
    assert voc_ap(perfect, gt) == 1.0
    assert voc_ap(perfect + [("a", 0.1, [50, 50, 60, 60])], gt) == 1.0  # an FP after full recall costs nothing
    assert voc_ap([], gt) == 0.0
    assert voc_ap([("c", 0.9, [0, 0, 10, 10])], gt) == 0.0  # an image without GT: FP
    # IoU exactly 0.5 is not a match (VOC: IoU > threshold); slightly more is
    # FP then TP: precision 1/2 at recall 1/2 -> AP 1/4
    assert voc_ap([("a", 0.9, [0, 0, 10, 5]), ("b", 0.8, [0, 0, 4, 4])], gt) == pytest.approx(0.25)
    assert voc_ap([("a", 0.9, [0, 0, 10, 5.1])], gt) == pytest.approx(0.5)  # 1 of 2 found, precision 1
    assert math.isnan(voc_ap(perfect, {}))


def test_mean_ap_over_classes_with_ground_truth():
    gt = {
        "cat": {"a": np.array([[0, 0, 4, 4]])},
        "dog": {"a": np.array([[5, 5, 9, 9]]), "b": np.array([[0, 0, 2, 2]])},
        "fox": {"a": np.zeros((0, 4))},
    }
    detections = {
        "cat": [("a", 0.9, [0, 0, 4, 4])],
        "dog": [("a", 0.8, [5, 5, 9, 9]), ("b", 0.9, [6, 6, 8, 8])],  # FP first, then TP: AP = 1/2 * 1/2
        "fox": [("a", 0.5, [0, 0, 1, 1])],  # no GT: left out
    }
    result = mean_ap(detections, gt)
    assert result["ap50"] == pytest.approx({"cat": 1.0, "dog": 0.25})
    assert result["map50"] == pytest.approx(0.625)
    assert math.isnan(mean_ap({}, {})["map50"])


def test_mask_box():
    mask = np.zeros((4, 5, 10), bool)
    mask[1:3, 0, 9] = True
    np.testing.assert_allclose(mask_box(mask), [1 / 4, 0, 9 / 10, 3 / 4, 1 / 5, 1])
    np.testing.assert_allclose(mask_box(np.ones((2, 3), bool)), [0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="non-empty"):
        mask_box(np.zeros((2, 2), bool))
