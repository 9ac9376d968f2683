"""One extreme voxel must not change how either model sees the rest of the scan (issue 16.3).

OSS-Net used to z-score over the brain with the plain mean and SD: one FLAIR voxel of 1e4 (the
brain's SD is about 1.4) shrank every other voxel towards 0 and emptied the result. Both models
now normalise from statistics that a few voxels cannot move, so the normalised images with and
without the outlier agree everywhere else. (The effect on Dice, before and after, on every BraTS
case: ``Testing/Benchmarks/robust_normalization.py``.)
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA_ROOT, hippocampus_paths
from MedNCASegmentLib.preprocessing import normalize_intensity
from OSSNetSegmentLib.data import INPUT_FILES, read_nifti_kji
from OSSNetSegmentLib.preprocessing import BACKGROUND, normalize_channel

CASE = DATA_ROOT / "BraTS_sample" / "brats_2013_pat0006_1"


def with_outlier(image: np.ndarray, value: float) -> tuple[np.ndarray, tuple]:
    """A copy with one voxel inside the head (the middle one above the background) set to ``value``."""
    spoiled = image.astype(np.float32, copy=True)
    inside = np.argwhere(image > image.min())
    voxel = tuple(inside[len(inside) // 2])
    spoiled[voxel] = value
    return spoiled, voxel


@pytest.mark.parametrize("name", ["FLAIR", "T1c"])
@pytest.mark.parametrize("value", [1e4, -1e4], ids=["bright", "dark"])
def test_ossnet_normalisation_ignores_one_outlier_voxel(name, value):
    image = read_nifti_kji(CASE / INPUT_FILES[name])[0]
    spoiled, voxel = with_outlier(image, value)
    clean, noisy = normalize_channel(image), normalize_channel(spoiled)
    others = np.ones(image.shape, bool)
    others[voxel] = False
    assert np.abs(clean - noisy)[others].max() < 0.01
    assert np.array_equal(clean == BACKGROUND, (noisy == BACKGROUND) & others)  # the head mask is kept


def test_ossnet_normalisation_of_a_clean_scan_is_the_plain_z_score_within_a_few_percent():
    image = read_nifti_kji(CASE / INPUT_FILES["FLAIR"])[0]
    brain = image > image.min()
    plain = (image[brain] - image[brain].mean()) / image[brain].std()
    robust = normalize_channel(image)[brain]
    inside = np.abs(plain) < 4  # away from the clip limits
    assert np.abs(robust[inside] - plain[inside]).max() < 0.05


@pytest.mark.parametrize("value", [1e4, -1e4], ids=["bright", "dark"])
def test_mednca_normalisation_ignores_one_outlier_voxel(value):
    image = read_nifti_kji(hippocampus_paths("hippocampus_001")[0])[0]
    spoiled, voxel = with_outlier(image, value)
    difference = np.abs(normalize_intensity(image) - normalize_intensity(spoiled))
    difference[voxel] = 0
    assert difference.max() < 0.01
