"""The OSS-Net panel's own rules, in plain Python (no Qt, no torch), tested headless.

The module widget (OSSNetSegment.py) stays a thin layer over these and over the shared
``EfficientSegmentationCommon.panel_state`` and ``segment_widget``: which volumes the model
needs and which are missing, how the panel's parameters become the run's ``OSSNetSettings``,
what the resolution slider's line says (grid and memory), and what is reported after a run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from EfficientSegmentationCommon.errors import InputVolumeError
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.grids import crop_to_roi
from EfficientSegmentationCommon.panel_state import RunSummary
from EfficientSegmentationCommon.settings import settings_from_parameters

from .resolution import plan_output_grid
from .settings import OSSNetSettings

# The panel has one selector per model input, in the model card's order.
INPUT_FIELDS = ("firstInput", "secondInput")


def input_volumes(parameters, count: int) -> list:
    """The selected input volumes for a model of ``count`` inputs (None where nothing is selected)."""
    if count > len(INPUT_FIELDS):
        raise ValueError(f"the panel has {len(INPUT_FIELDS)} input selectors; the model needs {count}")
    return [getattr(parameters, name) for name in INPUT_FIELDS[:count]]


def inputs_problem(volumes: Sequence, names: Sequence[str], volume_problem: Callable[[object], str]) -> str:
    """Why the inputs cannot be segmented ("" when they can): a missing input named by its
    modality, the same volume selected twice, or the first problem of a volume."""
    for volume, name in zip(volumes, names, strict=True):
        if volume is None:
            return f"Select the {name} volume."
    ids = [volume.GetID() for volume in volumes]
    if len(set(ids)) < len(ids):
        return f"Select a different volume for each input ({', '.join(names)})."
    for volume, name in zip(volumes, names, strict=True):
        problem = volume_problem(volume)
        if problem:
            return f"{name}: {problem}"
    return ""


def panel_settings(parameters) -> OSSNetSettings:
    """The run's ``OSSNetSettings`` from the panel's parameter node (any object with the
    settings' camelCase names as attributes)."""
    return settings_from_parameters(OSSNetSettings, parameters)


def resolution_text(reference_volume, roi, channels: int, settings: OSSNetSettings, orientation: str) -> str:
    """The line under the resolution slider: output grid, spacing, voxels and memory, planned
    as the run will plan it (``plan_output_grid``, with the model's ``orientation``) for the
    first input (its ROI box when an ROI is selected). "" when there is no usable volume yet."""
    if reference_volume is None or reference_volume.GetImageData() is None:
        return ""
    try:
        geometry = VolumeGeometry.from_volume_node(reference_volume)
        if roi is not None:
            geometry = crop_to_roi(geometry, roi)[1]
    except InputVolumeError as error:
        return str(error)
    return "Output: " + plan_output_grid(geometry, channels, settings, orientation).summary()


def run_summary(result) -> RunSummary:
    """What the panel reports about an ``OSSNetResult``: time, output grid, decoded share, what was
    done to the input, warnings."""
    grid = " x ".join(str(n) for n in result.geometry.shape_ijk)
    spacing = " x ".join(f"{s:.3g}" for s in result.geometry.spacing)
    voxels = result.labels.size
    details = (f"Output grid {grid} voxels of {spacing} mm; the network decoded {result.decoded_fraction:.1%} "
               f"of its {voxels / 1e6:.1f} million voxels (the rest follows from the coarse levels).",
               *result.details)
    name = result.segmentation.GetName() if result.segmentation is not None else ""
    return RunSummary(seconds=result.seconds, details=details, warnings=tuple(result.warnings), output_name=name)
