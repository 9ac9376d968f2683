"""The Med-NCA panel's own rules, in plain Python (no Qt, no torch), tested headless.

The module widget (MedNCASegment.py) stays a thin layer over these and over the shared
``EfficientSegmentationCommon.panel_state``: how the panel's parameters become the run's
``MedNCASettings``, and what is reported after a run.
"""

from __future__ import annotations

from EfficientSegmentationCommon.panel_state import RunSummary
from EfficientSegmentationCommon.settings import settings_from_parameters

from .settings import MedNCASettings

QUALITY_NAME = "quality score (NQM)"
STRUCTURE_SPREAD_NAME = "spread of the runs inside the structure"


def panel_settings(parameters) -> MedNCASettings:
    """The run's ``MedNCASettings`` from the panel's parameter node (any object with the
    settings' camelCase names as attributes, plus ``useTrainedSettings``).

    With ``useTrainedSettings`` the stage settings are left to the model (None).
    """
    return settings_from_parameters(MedNCASettings, parameters, use_trained=bool(parameters.useTrainedSettings))


def panel_boxes(parameters) -> dict[str, object] | None:
    """The boxes a whole-head run segments in: the parameter node's ``leftBox`` and ``rightBox``
    when both are set, neither was located in another volume than ``inputVolume`` (after the
    user picks another scan, its hippocampi are located anew) and there is no ``inputROI``
    (which asks for one hippocampus); else None (locate them)."""
    from .box_nodes import located_in_other_volume

    boxes = (parameters.leftBox, parameters.rightBox)
    if parameters.inputROI is not None or any(box is None for box in boxes):
        return None
    if any(located_in_other_volume(box, parameters.inputVolume) for box in boxes):
        return None
    return {"left": parameters.leftBox, "right": parameters.rightBox}


def volume_lines(volumes) -> list[str]:
    """The volumes of a result (``wholehead.HippocampusVolumes``) as a few lines, a small table."""
    if volumes is None:
        return []
    if volumes.left_mm3 is None:
        return [f"Volume: {volumes.summary().removeprefix('volume ')}"]
    lines = []
    for side, total in (("left", volumes.left_mm3), ("right", volumes.right_mm3)):
        parts = ", ".join(f"{name.removeprefix(side + ' ').removesuffix(' hippocampus')} {value:.0f}"
                          for name, value in volumes.segments_mm3.items() if name.startswith(side))
        lines.append(f"{side.capitalize()} hippocampus: {total:.0f} mm³ ({parts})")
    asymmetry = volumes.asymmetry_percent
    lines.append(f"Total: {volumes.total_mm3:.0f} mm³; asymmetry index (L−R)/((L+R)/2): "
                 + ("n/a" if asymmetry != asymmetry else f"{asymmetry:+.1f} %"))
    return lines


def structure_spread_values(result) -> str | None:
    """The spread inside the segmented structure(s) of a ``MedNCAResult``: "0.042", or on a whole
    head "left 0.041, right 0.047"; None when there is none (one run, or nothing segmented)."""
    scores = {name: value for name, value in result.structure_spread.items() if value is not None}
    if not scores:
        return None
    return ", ".join(f"{value:.3f}" if name == "structure" else f"{name} {value:.3f}" for name, value in scores.items())


def structure_spread_line(result) -> str | None:
    """The panel's line for :func:`structure_spread_values`, with the warning threshold."""
    values = structure_spread_values(result)
    if values is None:
        return None
    threshold = result.structure_spread_warning_threshold
    limit = f", warning above {threshold:g}" if threshold is not None else ""
    return f"{STRUCTURE_SPREAD_NAME[:1].upper()}{STRUCTURE_SPREAD_NAME[1:]} (lower is better{limit}): {values}."


def trained_settings(config) -> dict[str, float]:
    """Slider values showing a loaded model's trained stage settings (a ``MedNCAConfig``)."""
    return {"globalSteps": float(config.global_steps), "refinementSteps": float(config.refinement_steps),
            "downscale": float(config.downscale)}


def run_summary(result) -> RunSummary:
    """What the panel reports about a ``MedNCAResult``: time, volumes, the spread inside the
    structure, what was done to read the input (resampling), NQM per segment and the logic's
    warnings (red when it flags a likely failure). After one run the logic gives no score (None
    per segment) and says why among its warnings, so no score line is shown."""
    scored = all(score is not None for score in result.quality.values())
    spread_line = structure_spread_line(result)
    return RunSummary(
        seconds=result.seconds,
        quality=dict(result.quality) if scored else {},
        quality_name=QUALITY_NAME,
        likely_failure=result.likely_failure,
        warning_threshold=result.nqm_warning_threshold,
        warnings=tuple(result.warnings),
        output_name=_name(result.segmentation),
        details=(*volume_lines(result.volumes), *((spread_line,) if spread_line else ()), *result.details),
    )


def _name(node) -> str:
    return node.GetName() if node is not None else ""
