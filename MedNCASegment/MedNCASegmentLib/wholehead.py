"""Both hippocampi of a whole head: segment each located box with the one-hippocampus model,
place both back into the input, and measure the volumes.

The model was trained on crops around one hippocampus, so a whole head is segmented as two such
crops: each side's box (see :mod:`.localization`) is resampled onto a grid of the model's spacing
along the box's axes, the automaton runs there, and its class probabilities come back onto the
input voxels under the box, where they are decoded and only the largest connected structure is
kept (one hippocampus per box). The side's label values are the model's, shifted per side
(left: 1 anterior, 2 posterior; right: 3, 4), as the registry's ``bilateralSegments`` declare.

Arrays are numpy in Slicer's KJI order; positions are RAS mm; volumes are mm^3.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.progress import ProgressCallback, scaled
from EfficientSegmentationCommon.grids import KJISlices, axis_aligned_grid, crop_to_corners
from EfficientSegmentationCommon.resampling import resample
from EfficientSegmentationCommon.segmentation_output import SegmentSpec

from .inference import decode_labels, keep_largest_component, structure_spread
from .localization import SIDES, HippocampusBox, Localization, locate_hippocampi
from .preprocessing import normalize_intensity

# Node attributes (and CSV columns) that carry the volumes.
VOLUME_ATTRIBUTE = "MedNCA.Volume"


def side_label_offset(side: str, classes: int) -> int:
    """What is added to the model's label values (1..classes) on ``side``: 0 left, ``classes`` right."""
    return SIDES.index(side) * classes


@dataclass
class SideResult:
    """One side's answer: model labels (0..K) on the input voxels under the box, where they lie
    in the input (``slices``), the quality score per class (NQM), the summed spread of the
    runs (or None) and the spread inside the structure (``inference.structure_spread``)."""

    side: str
    slices: KJISlices
    labels: np.ndarray
    quality: np.ndarray
    spread: np.ndarray | None
    structure_spread: float | None = None


def segment_side(image: np.ndarray, geometry: VolumeGeometry, box: HippocampusBox, spacing: Sequence[float],
                 infer: Callable[[np.ndarray], object], keep_largest: bool = True,
                 uncertainty: bool = False, orientation: str = "RAS") -> SideResult:
    """Segment the hippocampus in ``box`` of ``image`` (raw intensities, KJI, on ``geometry``).

    ``infer`` runs the model on a normalised (D, H, W) array on an axis-aligned grid of
    ``spacing`` (mm, I J K) and the model's ``orientation`` (``grids.axis_aligned_grid``) covering the input voxels under the box, and returns an object with
    ``mean`` and ``std`` (K, D, H, W) and ``quality`` (K,), as :func:`.inference.segment` does.
    Voxels outside the (rotated) box stay background. Raises ``InputVolumeError`` when the box
    misses the image.

    The grid follows the input's voxel lattice, not the box's axes: on an input at the model's
    spacing (any axis order or direction) the model then sees the voxels themselves, as in
    training, instead of an interpolated copy, and the result does not depend on where a box
    falls between voxels. Interpolation at a sub-voxel offset blurs the image: on 12 validation
    crops shifted by half a voxel, Dice fell by 0.006 and NQM rose by 42%; with the box's own
    grid, boxes a few hundredths of a millimetre apart changed the MNI152 template's volumes by
    3.5% (RESULTS.md, whole head).
    """
    slices, under_box = crop_to_corners(geometry, box.corners_ras, f"the {box.side} hippocampus box")
    grid = axis_aligned_grid(under_box, spacing, orientation)
    model_image = normalize_intensity(resample(image[slices], under_box, grid, order=1))
    result = infer(model_image)
    # Voxels of the input under the box's corners but outside the (rotated) box stay background.
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in under_box.shape_ijk), indexing="ij"), axis=-1)
    inside = box.contains(under_box.voxel_to_ras(ijk)).transpose(2, 1, 0)
    mean = np.stack([resample(m, grid, under_box, order=1) * inside for m in result.mean])
    labels = decode_labels(mean)
    if keep_largest:
        labels = keep_largest_component(labels)
    spread = resample(np.asarray(result.std).sum(axis=0), grid, under_box, order=1)
    return SideResult(box.side, slices, labels, np.asarray(result.quality), spread if uncertainty else None,
                      structure_spread(spread, labels))


def place_sides(results: Sequence[SideResult], shape_kji: Sequence[int], classes: int) -> np.ndarray:
    """Both sides' labels in one label map of the input's shape (left 1..K, right K+1..2K).

    Where boxes overlap, a voxel keeps the first side's label unless that side found nothing there.
    """
    labels = np.zeros(tuple(shape_kji), dtype=np.uint8)
    for result in results:
        region = labels[result.slices]
        found = (result.labels > 0) & (region == 0)
        region[found] = result.labels[found] + side_label_offset(result.side, classes)
    return labels


@dataclass
class HeadResult:
    """Both sides of a head on the input grid: labels (left 1..K, right K+1..2K), the quality
    score per side and class, the summed spread of the runs (or None), the boxes used, the
    localisation (None when the boxes were given) and the spread inside each side's structure."""

    labels: np.ndarray
    quality: dict[str, np.ndarray]
    spread: np.ndarray | None
    boxes: dict[str, HippocampusBox]
    localization: Localization | None
    structure_spread: dict[str, float | None] = field(default_factory=dict)


# Share of a whole-head run's time spent locating (about 1-3 s against tens of seconds per side).
LOCATE_SHARE = 0.05


def segment_head(image: np.ndarray, geometry: VolumeGeometry, spacing: Sequence[float], classes: int,
                 infer: Callable[[np.ndarray, ProgressCallback], object],
                 boxes: dict[str, HippocampusBox] | None = None, keep_largest: bool = True,
                 uncertainty: bool = False, progress: ProgressCallback | None = None,
                 orientation: str = "RAS") -> HeadResult:
    """Segment both hippocampi of a head ``image`` (raw intensities, KJI, on ``geometry``).

    Locates the boxes (:func:`.localization.locate_hippocampi`) unless ``boxes`` gives them
    (e.g. as the user adjusted them), then segments each side (:func:`segment_side`) with
    ``infer(model_image, progress)`` and places both in one label map. Progress messages name
    the stage: "locating", "left", "right". ``spacing`` and ``orientation``: the model's grid
    (its registry entry). Raises ``LocalizationError`` when the head cannot
    be located, and whatever ``infer`` or ``progress`` raise (a cancel request).
    """
    report = progress or (lambda fraction, message: None)
    localization = None
    if boxes is None:
        report(0.0, "locating the hippocampi")
        localization = locate_hippocampi(image, geometry)
        boxes = {side: localization.box(side) for side in SIDES}
    start = LOCATE_SHARE if localization is not None else 0.0
    results = []
    for index, side in enumerate(SIDES):
        share = (1.0 - start) / len(SIDES)
        side_progress = scaled(report, start + index * share, start + (index + 1) * share)

        def run(model_image: np.ndarray, side=side, side_progress=side_progress):
            return infer(model_image, lambda fraction, message: side_progress(fraction, f"{side}: {message}"))

        side_progress(0.0, f"{side}: segmenting")
        results.append(segment_side(image, geometry, boxes[side], spacing, run, keep_largest, uncertainty,
                                    orientation))
    labels = place_sides(results, geometry.shape_kji, classes)
    spread = None
    if uncertainty:
        spread = np.zeros(geometry.shape_kji, dtype=np.float32)
        for result in results:
            spread[result.slices] = np.maximum(spread[result.slices], result.spread)
    return HeadResult(labels, {r.side: r.quality for r in results}, spread, dict(boxes), localization,
                      {r.side: r.structure_spread for r in results})


def asymmetry_index(left_mm3: float, right_mm3: float) -> float:
    """Left/right asymmetry index in percent: (L - R) / ((L + R) / 2) x 100.

    The standard definition in hippocampal volumetry (e.g. Pedraza et al., J Int Neuropsychol
    Soc 2004): positive when the left is larger, 0 for equal volumes, within +-200. NaN when
    both are empty.
    """
    mean = (left_mm3 + right_mm3) / 2
    return (left_mm3 - right_mm3) / mean * 100 if mean > 0 else math.nan


@dataclass(frozen=True)
class HippocampusVolumes:
    """Volumes (mm^3) of a labelled result: per segment (by name) and in total, and for both
    sides (whole head) per side and the left/right asymmetry index (percent, see
    :func:`asymmetry_index`); ``left_mm3``/``right_mm3`` are None for one hippocampus (a crop)."""

    segments_mm3: dict[str, float]
    left_mm3: float | None = None
    right_mm3: float | None = None

    @property
    def total_mm3(self) -> float:
        return float(sum(self.segments_mm3.values()))

    @property
    def asymmetry_percent(self) -> float | None:
        if self.left_mm3 is None or self.right_mm3 is None:
            return None
        return asymmetry_index(self.left_mm3, self.right_mm3)

    def table(self) -> dict[str, float | None]:
        """Name -> value, in a fixed order: each segment's mm^3, then left, right (None for a
        crop), total (mm^3) and the asymmetry index (%, None for a crop). The columns of the
        CSV report and the names of the node attributes."""
        row: dict[str, float | None] = {f"{name} (mm3)": value for name, value in self.segments_mm3.items()}
        row.update({"left hippocampus (mm3)": self.left_mm3, "right hippocampus (mm3)": self.right_mm3,
                    "total (mm3)": self.total_mm3, "asymmetry index (%)": self.asymmetry_percent})
        return row

    def summary(self) -> str:
        """One line for people."""
        if self.left_mm3 is None or self.right_mm3 is None:
            parts = ", ".join(f"{name} {value:.0f}" for name, value in self.segments_mm3.items())
            return f"volume {self.total_mm3:.0f} mm3 ({parts})"
        asymmetry = self.asymmetry_percent
        asymmetry_text = "n/a (both sides empty)" if math.isnan(asymmetry) else f"{asymmetry:+.1f} %"
        return (f"left {self.left_mm3:.0f} mm3, right {self.right_mm3:.0f} mm3, total {self.total_mm3:.0f} mm3, "
                f"asymmetry index (L-R)/((L+R)/2) {asymmetry_text}")


def measure_volumes(labels_kji: np.ndarray, geometry: VolumeGeometry, segments: Sequence[SegmentSpec],
                    classes: int | None = None) -> HippocampusVolumes:
    """Volumes of a label map on ``geometry``: voxel count x voxel volume (|det| of the
    IJK-to-RAS matrix, mm^3) per segment. With ``classes`` (the model's K) the map holds both
    sides: label values 1..K are the left, K+1..2K the right (see :func:`side_label_offset`)."""
    counts = np.bincount(np.asarray(labels_kji).ravel(), minlength=max(s.label_value for s in segments) + 1)
    voxel_mm3 = abs(float(np.linalg.det(geometry.ijk_to_ras[:3, :3])))
    volumes = {spec.name: float(counts[spec.label_value]) * voxel_mm3 for spec in segments}
    if classes is None:
        return HippocampusVolumes(volumes)
    left = sum(volumes[s.name] for s in segments if s.label_value <= classes)
    right = sum(volumes[s.name] for s in segments if s.label_value > classes)
    return HippocampusVolumes(volumes, left, right)
