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


def panel_settings(parameters) -> MedNCASettings:
    """The run's ``MedNCASettings`` from the panel's parameter node (any object with the
    settings' camelCase names as attributes, plus ``useTrainedSettings``).

    With ``useTrainedSettings`` the stage settings are left to the model (None).
    """
    return settings_from_parameters(MedNCASettings, parameters, use_trained=bool(parameters.useTrainedSettings))


def trained_settings(config) -> dict[str, float]:
    """Slider values showing a loaded model's trained stage settings (a ``MedNCAConfig``)."""
    return {"globalSteps": float(config.global_steps), "refinementSteps": float(config.refinement_steps),
            "downscale": float(config.downscale)}


def run_summary(result) -> RunSummary:
    """What the panel reports about a ``MedNCAResult``: time, NQM per segment and the logic's
    warnings (red when it flags a likely failure). After one run the logic gives no score
    (None per segment) and says why among its warnings, so no score line is shown."""
    scored = all(score is not None for score in result.quality.values())
    return RunSummary(
        seconds=result.seconds,
        quality=dict(result.quality) if scored else {},
        quality_name=QUALITY_NAME,
        likely_failure=result.likely_failure,
        warning_threshold=result.quality_warning_threshold,
        warnings=tuple(result.warnings),
        output_name=_name(result.segmentation),
    )


def _name(node) -> str:
    return node.GetName() if node is not None else ""
