"""Localization metrics (cIoU, AUC) on hand-made maps and boxes."""
from __future__ import annotations

import pytest
import torch

from avssl.metrics.localization import (
    binarize_heatmap,
    ciou,
    ciou_auc,
    ciou_success_rate,
    ground_truth_map,
    whole_image_baseline,
)

H, W = 6, 8  # 48 pixels
BOX = (2, 1, 5, 4)  # xmin, ymin, xmax, ymax: rows 1-3, columns 2-4, 9 pixels


def test_union_map_marks_the_box_pixels() -> None:
    gt = ground_truth_map([BOX], H, W)
    assert gt.shape == (H, W) and gt.sum() == 9
    assert gt[1:4, 2:5].eq(1).all() and gt[0].eq(0).all() and gt[:, 5:].eq(0).all()
    assert ground_truth_map([BOX, BOX], H, W).equal(gt)  # union stays binary


def test_consensus_map_weights_one_annotator_half() -> None:
    gt = ground_truth_map([(0, 0, 4, 2), (2, 0, 6, 2), (3, 0, 4, 1)], H, W, combine="consensus")
    assert gt[1, 0].item() == 0.5   # one box
    assert gt[1, 2].item() == 1.0   # two boxes
    assert gt[0, 3].item() == 1.0   # three boxes, clipped at 1
    assert gt[3].eq(0).all()
    assert gt.sum().item() == pytest.approx(2 * (4 * 0.5 + 2 * 1))  # rows 0, 1: columns 0,1,4,5 half, 2,3 full


def test_boxes_are_truncated_and_clipped_to_the_image() -> None:
    gt = ground_truth_map(torch.tensor([[-3.0, 4.7, 2.9, 99.0]]), H, W)
    assert gt.sum() == 2 * 2 and gt[4:, :2].eq(1).all()  # x 0..1, y 4..5


def test_boxes_outside_the_image_cover_nothing() -> None:
    # a negative end was a Python slice from the far side: (−10, −10, −3, −2) covered rows 0..3, columns 0..4
    assert ground_truth_map([(-10, -10, -3, -2)], H, W).sum() == 0
    assert ground_truth_map([(-10, 1, -1, 4), (9, 0, 12, 6), (0, 7, 8, 9)], H, W).sum() == 0
    assert ground_truth_map([(-10, -10, -3, -2), BOX], H, W).equal(ground_truth_map([BOX], H, W))


def test_median_rule_keeps_pixels_strictly_above_the_middle_value() -> None:
    heatmap = torch.arange(48.0).reshape(H, W)
    mask = binarize_heatmap(heatmap)
    assert int(mask.sum()) == 23  # values 25..47: one short of half, as LVS's sort()[HW // 2]
    assert bool(mask.flatten()[25:].all()) and not bool(mask.flatten()[:25].any())


def test_median_rule_on_saturated_maps_keeps_every_maximum_as_lvs() -> None:
    # more than half the pixels at the maximum: nothing is above the middle value, but LVS's
    # `pred[pred > t] = 1; pred[pred < 1] = 0` leaves its normalised maxima (1) marked
    heatmap = torch.zeros(H, W)
    heatmap.view(-1)[:30] = 2.0
    heatmap.view(-1)[30:35] = 1.0
    mask = binarize_heatmap(heatmap)
    assert mask.equal(heatmap == 2.0) and int(mask.sum()) == 30
    gt = ground_truth_map([(0, 0, 8, 3)], H, W)  # rows 0-2: the first 24 pixels
    assert ciou(heatmap, gt) == pytest.approx(24 / (24 + 6))
    # a constant map: LVS skips the normalisation, so 1 + value stays ≥ 1 exactly when value ≥ 0
    assert int(binarize_heatmap(torch.full((H, W), 0.3)).sum()) == 48
    assert int(binarize_heatmap(torch.zeros(H, W)).sum()) == 48
    assert int(binarize_heatmap(torch.full((H, W), -0.3)).sum()) == 0


def test_heatmap_equal_to_the_box_gives_one() -> None:
    gt = ground_truth_map([BOX], H, W)
    assert ciou(gt.clone(), gt) == pytest.approx(1.0)


def test_disjoint_heatmap_gives_zero() -> None:
    gt = ground_truth_map([BOX], H, W)
    assert ciou(1 - gt, gt) == 0.0


def test_partial_overlap_by_hand() -> None:
    gt = ground_truth_map([BOX], H, W)
    prediction = ground_truth_map([(4, 1, 7, 4)], H, W)  # columns 4-6: 3 of its 9 pixels in the box
    # cIoU = 3 / (9 + 6)
    assert ciou(prediction, gt, binarized=True) == pytest.approx(3 / 15)


def test_whole_image_baseline() -> None:
    gt = ground_truth_map([BOX], H, W)
    assert whole_image_baseline(gt) == pytest.approx(9 / 48)  # box area / image area
    consensus = ground_truth_map([BOX], H, W, combine="consensus")
    # one annotator: g = 0.5 on 9 pixels -> 4.5 / (4.5 + 39)
    assert whole_image_baseline(consensus) == pytest.approx(4.5 / 43.5)


def test_consensus_ciou_by_hand() -> None:
    g = ground_truth_map([(0, 0, 4, 3), (0, 0, 2, 3)], H, W, combine="consensus")  # 6 px at 1, 6 px at 0.5
    prediction = ground_truth_map([(1, 0, 5, 3)], H, W)  # 12 px: 3 at 1, 6 at 0.5, 3 outside
    assert ciou(prediction, g, binarized=True) == pytest.approx((3 + 3) / (9 + 3))


def test_ciou_input_errors() -> None:
    with pytest.raises(ValueError, match="one size"):
        ciou(torch.zeros(H, W), torch.zeros(W, H))
    with pytest.raises(ValueError, match="empty"):
        ciou(torch.rand(H, W), torch.zeros(H, W))
    with pytest.raises(ValueError, match="0s and 1s"):
        ciou(torch.full((H, W), 0.5), ground_truth_map([BOX], H, W), binarized=True)


def test_auc_conventions() -> None:
    assert ciou_auc([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    # every cIoU passes t = 0 and fails t >= 0.05: one trapezoid 0.05 * (1 + 0) / 2
    assert ciou_auc([0.0, 0.0]) == pytest.approx(0.025)
    # [0.5, 1.0]: rate 1 for t <= 0.5 (area 0.5), 1 -> 0.5 over [0.5, 0.55] (0.0375),
    # 0.5 for t in [0.55, 1] (0.225)
    assert ciou_auc([0.5, 1.0]) == pytest.approx(0.7625)


def test_success_rate_at_half() -> None:
    assert ciou_success_rate([0.2, 0.5, 0.7, 0.49]) == pytest.approx(0.5)
    assert ciou_success_rate(torch.tensor([0.2, 0.5]), threshold=0.1) == pytest.approx(1.0)


def test_gt_area_rule_marks_as_many_pixels_as_the_ground_truth() -> None:
    gt = ground_truth_map([BOX], H, W)
    # a smooth map peaking on the box: every box pixel above every other pixel
    heatmap = gt * 10 + torch.arange(48.0).reshape(H, W) / 48
    assert ciou(heatmap, gt, rule="gt_area") == pytest.approx(1.0)
    # the median rule marks 23 pixels: the 9 of the box and 14 others → 9 / (9 + 14)
    assert ciou(heatmap, gt) == pytest.approx(9 / 23)
    assert int(binarize_heatmap(heatmap, num_pixels=5).sum()) == 5
    with pytest.raises(ValueError, match="rule"):
        ciou(heatmap, gt, rule="otsu")
