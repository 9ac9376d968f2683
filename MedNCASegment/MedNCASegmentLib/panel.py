"""The Med-NCA panel's own rules, in plain Python (no Qt, no torch), tested headless.

The module widget (MedNCASegment.py) stays a thin layer over these and over the shared
``EfficientSegmentationCommon.panel_state``: how the panel's parameters become arguments of
``MedNCASegmentLogic.prepare``, how the model list is shown, and what is reported after a run.
"""

from __future__ import annotations

from dataclasses import dataclass

from EfficientSegmentationCommon.panel_state import RunSummary

# The automaton reports "coarse" and "fine" steps; the panel calls the stages global and refinement.
STAGE_NAMES = {"coarse": "global", "fine": "refinement"}
QUALITY_NAME = "quality score (NQM)"


@dataclass(frozen=True)
class ModelItem:
    """One entry of the model combo box: shown text, registry id (item data) and tooltip."""

    text: str
    model_id: str
    tooltip: str
    available: bool


def model_items(entries) -> list[ModelItem]:
    """Combo box items for registry entries; a model whose weights are not installed says so."""
    items = []
    for entry in entries:
        available = entry.path.exists()
        text = entry.title if available else f"{entry.title} (weights not installed)"
        details = [entry.description, f"Version {entry.version}" if entry.version else "",
                   f"License: {entry.license}" if entry.license else "",
                   "" if available else f"Weights file missing: {entry.path}"]
        items.append(ModelItem(text, entry.id, "\n".join(d for d in details if d), available))
    return items


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
    return {"globalSteps": float(config.coarse_steps), "refinementSteps": float(config.fine_steps),
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
