"""Dice and HD95 on real hippocampus labels, against values worked out by hand."""

from __future__ import annotations

import numpy as np
from EfficientSegmentationCommon.metrics import dice, hd95


def test_dice_identical_disjoint_and_empty(hippocampus):
    anterior, posterior = hippocampus.labels == 1, hippocampus.labels == 2
    assert dice(anterior, anterior) == 1.0
    assert dice(anterior, posterior) == 0.0
    assert dice(np.zeros_like(anterior), np.zeros_like(anterior)) == 1.0
    half = anterior.copy()
    half[tuple(np.argwhere(anterior)[: anterior.sum() // 2].T)] = False
    expected = 2 * half.sum() / (anterior.sum() + half.sum())
    assert abs(dice(anterior, half) - expected) < 1e-12


def test_hd95_is_zero_for_identical_masks_and_follows_spacing(hippocampus):
    mask = hippocampus.labels > 0
    assert hd95(mask, mask, (1.0, 1.0, 1.0)) == 0.0
    shifted = np.roll(mask, 1, axis=2)  # one voxel along I
    assert hd95(mask, shifted, (1.0, 1.0, 1.0)) == 1.0
    assert hd95(mask, shifted, (2.5, 1.0, 1.0)) == 2.5  # spacing is given in I, J, K order
    assert hd95(mask, np.zeros_like(mask), (1.0, 1.0, 1.0)) == float("inf")
