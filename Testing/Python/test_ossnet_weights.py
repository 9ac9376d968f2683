"""OSS-Net trained weights on real data: the shipped file and card, dense validation Dice, and
resolution independence (the same anatomy at another spacing gives the same segmentation).

These need ``OSSNetSegment/Resources/Models/ossnet_brats_wholetumour.pt`` (written by
``python -m OSSNetSegmentLib.training``, card by ``python -m OSSNetSegmentLib.evaluation``);
they are skipped, saying so, until it exists (``OSSNET_WEIGHTS`` names another file to test,
e.g. a training checkpoint). The validation case was never seen in training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from EfficientSegmentationCommon.metrics import dice
from OSSNetSegmentLib.data import Case, load_case, read_split
from OSSNetSegmentLib.inference import segment
from OSSNetSegmentLib.model_io import load_model
from OSSNetSegmentLib.preprocessing import normalize_images, resample_centred

from conftest import DATA_ROOT, REPO_ROOT

MODELS = REPO_ROOT / "OSSNetSegment" / "Resources" / "Models"
WEIGHTS = Path(os.environ.get("OSSNET_WEIGHTS", MODELS / "ossnet_brats_wholetumour.pt"))

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"trained weights not yet in {WEIGHTS}")


@pytest.fixture(scope="module")
def model():
    return load_model(WEIGHTS)[0]


@pytest.fixture(scope="module")
def validation_case():
    return load_case(DATA_ROOT / "BraTS_sample", read_split(MODELS / "brats_split.json")["validation"][0])


@pytest.fixture(scope="module")
def native(model, validation_case):
    return segment(model, validation_case.images, validation_case.spacing)


def crop_around(case, centre, size: int):
    """A box of the case with its images normalised over the whole scan first, as the logic does
    for an ROI (a crop normalised on its own would not look like what the model was trained on)."""
    normalized = Case(case.case_id, list(normalize_images(case.images)), case.labels, case.spacing)
    return normalized.crop(tuple(slice(max(0, c - size // 2), max(0, c - size // 2) + size) for c in centre))


@pytest.fixture(scope="module")
def tumour_crop(validation_case):
    """A 96 mm box around the validation tumour (fast resolution checks)."""
    return crop_around(validation_case, np.argwhere(validation_case.target).mean(axis=0).round().astype(int), 96)


@pytest.fixture(scope="module")
def border_crop(validation_case):
    """A 48 mm box around a point of the tumour's border (the finer-output check)."""
    k, j, i = np.argwhere(validation_case.target).mean(axis=0).round().astype(int)
    row = validation_case.target[k, j, i:]
    return crop_around(validation_case, (k, j, i + int(np.argmin(row))), 48)


def test_weights_file_and_card() -> None:
    assert WEIGHTS.stat().st_size < 4_000_000
    model, metadata = load_model(WEIGHTS)
    assert model.parameter_count < 1_000_000 and metadata["seed"] is not None and metadata["command"]
    card = json.loads(WEIGHTS.with_suffix(".json").read_text())
    for key in ("id", "method", "inputs", "segments", "spacing", "metrics", "training", "training_hardware",
                "parameters", "differences_from_reference", "validation"):
        assert key in card, key
    assert card["inputs"] == ["FLAIR", "T1c"] and card["segments"][0]["label"] == 1
    assert WEIGHTS.with_suffix(".md").read_text().startswith("# Model card")
    if WEIGHTS == MODELS / "ossnet_brats_wholetumour.pt":  # the registry quotes the shipped card
        registry = json.loads((REPO_ROOT / "Resources" / "Models.json").read_text())
        entry = next(m for m in registry["models"] if m["id"] == card["id"])
        assert entry["metrics"]["validationDice"] == card["metrics"]["validation_dice"]
        assert entry["inputs"] == card["inputs"] and entry["segments"][0]["name"] == card["segments"][0]["name"]


def test_dense_validation_dice_as_the_card_says_with_few_decoded_voxels(native, validation_case) -> None:
    card = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert native.shape == validation_case.labels.shape
    measured = dice(native.labels > 0, validation_case.target)
    assert abs(measured - card["metrics"]["validation_dice"]) <= 0.02, measured
    assert measured > 0.7
    assert native.decoded_fraction < 0.1


def test_a_coarser_input_gives_the_same_segmentation(model, tumour_crop) -> None:
    """The crop degraded to a 2 mm scan, segmented on the 1 mm grid, matches the 1 mm result."""
    reference = segment(model, tumour_crop.images, tumour_crop.spacing, normalized=True)
    low, low_spacing = resample_centred(torch.from_numpy(np.stack(tumour_crop.images)), tumour_crop.spacing[::-1], 2.0)
    upsampled = segment(model, [c.numpy() for c in low], low_spacing[::-1], output_spacing=tumour_crop.spacing,
                        normalized=True)
    assert upsampled.shape == reference.shape
    assert dice(upsampled.labels > 0, reference.labels > 0) > 0.85
    assert dice(upsampled.labels > 0, tumour_crop.target) > dice(reference.labels > 0, tumour_crop.target) - 0.05


def test_a_finer_output_refines_the_native_one(model, border_crop) -> None:
    """At 0.5 mm each 1 mm voxel is split in eight; their average agrees with the 1 mm result."""
    reference = segment(model, border_crop.images, border_crop.spacing, normalized=True)
    assert 0.05 < reference.labels.mean() < 0.95  # the crop holds a stretch of border
    fine = segment(model, border_crop.images, border_crop.spacing, output_spacing=tuple(s / 2 for s in border_crop.spacing), normalized=True)
    assert fine.shape == tuple(2 * n for n in reference.shape)
    k, j, i = reference.shape
    pooled = fine.labels.reshape(k, 2, j, 2, i, 2).mean(axis=(1, 3, 5)) > 0.5
    assert dice(pooled, reference.labels > 0) > 0.9
    assert fine.decoded_fraction < reference.decoded_fraction  # the border is a smaller share of a finer grid
