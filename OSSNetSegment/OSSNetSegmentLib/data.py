"""The BraTS sample as the trainer sees it: cases, a fixed split, arrays in KJI order.

Training reads NIfTI files directly with nibabel (no Slicer needed); arrays are transposed to
Slicer's KJI order so that a model trained here sees volumes exactly as the Slicer logic hands
them over. Each case has FLAIR and contrast T1 (z-scored inside the brain by the data's
provider), expert labels 0..4 and a brain mask, on a 240x240x155 grid of 1 mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from EfficientSegmentationCommon.training import read_split  # noqa: F401  (the split format both models share)

# Files of one case, by input name (the model's ``inputs`` order picks from these).
INPUT_FILES = {"FLAIR": "Flair_subtrMeanDivStd.nii.gz", "T1c": "T1c_subtrMeanDivStd.nii.gz"}
LABELS_FILE = "OTMultiClass.nii.gz"
# BraTS 2020 regions as sets of the labels 1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing tumour.
REGIONS = {"whole tumour": (1, 2, 3, 4), "tumour core": (1, 3, 4), "enhancing tumour": (4,)}
# What the model segments (output label 1) and how the segment is shown.
SEGMENT_NAME = "whole tumour"
SEGMENT_COLOR = (0.93, 0.47, 0.20)


@dataclass
class Case:
    """One labelled volume: input images (in the order asked for) and labels, all (K, J, I)."""

    case_id: str
    images: list[np.ndarray]
    labels: np.ndarray  # uint8, 0..4
    spacing: tuple[float, float, float]  # I, J, K mm (like VolumeGeometry.spacing)

    @property
    def target(self) -> np.ndarray:
        """The model's target: whole tumour (any label > 0)."""
        return np.isin(self.labels, REGIONS[SEGMENT_NAME])

    def crop(self, slices: tuple[slice, slice, slice]) -> "Case":
        """The same case cut to a KJI box (tests use small crops)."""
        return Case(self.case_id, [np.ascontiguousarray(image[slices]) for image in self.images],
                    np.ascontiguousarray(self.labels[slices]), self.spacing)


def read_nifti_kji(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI file as a float32 numpy array in KJI order (Slicer's), and its spacing (I, J, K mm)."""
    import nibabel

    image = nibabel.load(str(path))
    array = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0).copy()
    return array, tuple(float(z) for z in image.header.get_zooms()[:3])


def case_ids(data_dir: Path) -> list[str]:
    """Ids of every case folder that has the labels and all input files."""
    return sorted(p.name for p in Path(data_dir).iterdir()
                  if p.is_dir() and (p / LABELS_FILE).is_file() and all((p / f).is_file() for f in INPUT_FILES.values()))


def load_case(data_dir: Path, case_id: str, inputs: tuple[str, ...] = ("FLAIR", "T1c")) -> Case:
    folder = Path(data_dir) / case_id
    images = []
    spacing = None
    for name in inputs:
        if name not in INPUT_FILES:
            raise ValueError(f"unknown input {name!r}; the data has {sorted(INPUT_FILES)}")
        image, spacing = read_nifti_kji(folder / INPUT_FILES[name])
        images.append(image)
    labels, _ = read_nifti_kji(folder / LABELS_FILE)
    return Case(case_id, images, labels.round().astype(np.uint8), spacing)
