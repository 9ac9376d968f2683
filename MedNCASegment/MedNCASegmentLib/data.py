"""The MSD hippocampus data set as the trainer sees it: cases, a fixed split, arrays in KJI order.

Training reads NIfTI files directly with nibabel (no Slicer needed); arrays are transposed to
Slicer's KJI order so that a model trained here sees volumes exactly as the Slicer logic hands
them over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from EfficientSegmentationCommon.training import read_split  # noqa: F401  (the split format both models share)

# Label values of the MSD hippocampus task, which the model's output classes follow.
CLASS_NAMES = ("anterior hippocampus", "posterior hippocampus")
# Display colours (RGB 0..1) of the classes, as the registry and model cards declare them.
CLASS_COLORS = ((0.98, 0.75, 0.27), (0.27, 0.65, 0.95))


@dataclass
class Case:
    """One labelled volume: raw image and labels, both (K, J, I)."""

    case_id: str
    image: np.ndarray
    labels: np.ndarray


def read_nifti_kji(path: Path) -> np.ndarray:
    """A NIfTI file as a numpy array in KJI order (Slicer's), float32."""
    import nibabel

    return np.asarray(nibabel.load(str(path)).dataobj, dtype=np.float32).transpose(2, 1, 0).copy()


def case_ids(data_dir: Path) -> list[str]:
    """Ids ("hippocampus_001", ...) of every case that has both an image and labels."""
    images = {p.name.removesuffix(".nii.gz") for p in (data_dir / "imagesTr").glob("hippocampus_*.nii.gz")}
    labels = {p.name.removesuffix(".nii.gz") for p in (data_dir / "labelsTr").glob("hippocampus_*.nii.gz")}
    return sorted(images & labels)


def load_case(data_dir: Path, case_id: str) -> Case:
    image = read_nifti_kji(data_dir / "imagesTr" / f"{case_id}.nii.gz")
    labels = read_nifti_kji(data_dir / "labelsTr" / f"{case_id}.nii.gz").round().astype(np.uint8)
    return Case(case_id, image, labels)
