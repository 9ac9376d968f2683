"""The Med-NCA panel's own rules, in plain Python (no Qt, no torch), tested headless.

The module widget (MedNCASegment.py) stays a thin layer over these and over the shared
``EfficientSegmentationCommon.panel_state``: how the panel's parameters become arguments of
``MedNCASegmentLogic.prepare``, and what is reported after a run.
"""

from __future__ import annotations

from EfficientSegmentationCommon.panel_state import RunSummary

QUALITY_NAME = "quality score (NQM)"


def segment_arguments(parameters) -> dict:
    """Keyword arguments of ``MedNCASegmentLogic.prepare`` (after the input volume) from the
    panel's parameter node (any object with its fields as attributes).

    With ``useTrainedSettings`` the stage settings are left to the model (None); the sliders
    hold floats (ctkSliderWidget binds to float), the logic takes integers.
    """
    trained = bool(parameters.useTrainedSettings)

    def integer(value) -> int | None:
        return None if trained else int(round(value))

    return {
        "model": parameters.model or None,
        "globalSteps": integer(parameters.globalSteps),
        "refinementSteps": integer(parameters.refinementSteps),
        "downscale": integer(parameters.downscale),
        "runs": int(round(parameters.runs)),
        "device": parameters.device or "cpu",
        "roi": parameters.inputROI,
        "outputSegmentation": parameters.outputSegmentation,
        "uncertaintyVolume": bool(parameters.createUncertaintyVolume),
        "seed": int(parameters.seed),
        "keepLargestComponent": bool(parameters.keepLargestComponent),
    }


def trained_settings(config) -> dict[str, float]:
    """Slider values showing a loaded model's trained stage settings (a ``MedNCAConfig``)."""
    return {"globalSteps": float(config.global_steps), "refinementSteps": float(config.refinement_steps),
            "downscale": float(config.downscale)}


def run_summary(result, runs: int) -> RunSummary:
    """What the panel reports about a ``MedNCAResult`` of ``runs`` stochastic runs: time, NQM per
    segment and the failure warning. One run has no spread, so no quality score to show."""
    if runs < 2:
        return RunSummary(seconds=result.seconds, warnings=(
            "No quality score: it needs at least 2 stochastic runs.", *result.warnings),
            output_name=_name(result.segmentation))
    return RunSummary(
        seconds=result.seconds,
        quality=dict(result.quality),
        quality_name=QUALITY_NAME,
        likely_failure=result.likely_failure,
        warning_threshold=result.quality_warning_threshold,
        warnings=tuple(result.warnings),
        output_name=_name(result.segmentation),
    )


def _name(node) -> str:
    return node.GetName() if node is not None else ""
