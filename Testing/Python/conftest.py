"""Shared fixtures: where the real data is, a fresh headless scene, and a loaded hippocampus case.

The data lives outside the repository, in ``<repo>/../shared/data`` (override with the
``EFFSEG_DATA`` environment variable). It is always present for this project, so a missing
folder is an error, not a reason to skip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.scene import create_scene, load_volume
from EfficientSegmentationCommon.volume_arrays import array_from_volume

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT = Path(os.environ.get("EFFSEG_DATA", REPO_ROOT.parent / "shared" / "data"))
HIPPOCAMPUS = DATA_ROOT / "Task04_Hippocampus"


def hippocampus_paths(case: str) -> tuple[Path, Path]:
    """Image and label file of an MSD Task04 case such as ``hippocampus_001``."""
    image, labels = HIPPOCAMPUS / "imagesTr" / f"{case}.nii.gz", HIPPOCAMPUS / "labelsTr" / f"{case}.nii.gz"
    if not image.is_file() or not labels.is_file():
        pytest.fail(f"Real test data missing: {image} / {labels}. Set EFFSEG_DATA to the shared data folder.")
    return image, labels


@dataclass
class LoadedCase:
    """A real case in a scene: the image node, its voxels and geometry, and the expert labels."""

    volume: object
    image: np.ndarray
    geometry: VolumeGeometry
    labels: np.ndarray


@pytest.fixture
def scene():
    return create_scene()


def load_case(scene, case: str) -> LoadedCase:
    """Load a case; the label node is removed again so only the image stays in the scene."""
    image_path, labels_path = hippocampus_paths(case)
    volume = load_volume(scene, image_path)
    labels_node = load_volume(scene, labels_path)
    labels, _ = array_from_volume(labels_node)
    scene.RemoveNode(labels_node)
    image, geometry = array_from_volume(volume)
    return LoadedCase(volume, image, geometry, labels.astype(np.int16))


@pytest.fixture
def hippocampus(scene) -> LoadedCase:
    return load_case(scene, "hippocampus_001")
