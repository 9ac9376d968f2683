"""Med-NCA's user options, declared once (see ``EfficientSegmentationCommon.settings``).

The panel's parameter node, the ``mednca-segment`` flags and the keyword arguments of
``MedNCASegmentLogic.segment`` are all made from these fields. The stage settings default to
None: the values the model was trained with, read from its card (``MedNCAConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from EfficientSegmentationCommon.settings import option, validate

# "head": both hippocampi of a whole head, located by registration (MedNCASegmentLib.wholehead);
# "crop": the input (or its ROI) holds one hippocampus; "auto": decided by the field of view.
MODES = ("auto", "head", "crop")


@dataclass(frozen=True)
class MedNCASettings:
    """How one Med-NCA run segments; frozen, validated on creation (ValueError naming the option)."""

    model: str | None = option(None, "registry id or model file (.pt); default: the first Med-NCA model", cli=True)
    # The panel starts at the shipped model's trained values (its card) until a run reads the chosen model's.
    global_steps: int | None = option(None, "steps of the global stage on the downscaled image",
                                      minimum=0, maximum=100, trained=True, slider=True, panel_default=24)
    # At least one: without the full-resolution stage the output is the downscaled stage's, blown up
    # (a fresh-user trial got 98% of a crop labelled, with a low spread).
    refinement_steps: int | None = option(None, "steps of the refinement stage at full resolution",
                                          minimum=1, maximum=100, trained=True, slider=True, panel_default=16)
    downscale: int | None = option(None, "downscale factor of the global stage", minimum=1, maximum=8,
                                   trained=True, slider=True, panel_default=4)
    runs: int = option(10, "stochastic runs: their mean is the result, their spread the quality score",
                       minimum=1, maximum=50, slider=True)
    seed: int = option(0, "seed of the random cell updates (the same seed gives the same result)",
                       minimum=0, maximum=1000000)
    device: str = option("cpu", "torch device: cpu, or cuda where this computer has it")
    keep_largest_component: bool = option(True, "clear all but the largest connected structure")
    uncertainty_volume: bool = option(False, "also write the spread of the runs as a volume", cli=False)
    mirror: bool = option(True, "every second run sees the volume mirrored left-right (the model is trained with flips)")
    mode: str = option("auto", "auto: on a whole head (field of view 80 mm or more) locate and segment both "
                       "hippocampi, on a crop around one hippocampus segment it as it is; head or crop forces either",
                       choices=MODES)
    # Not a CLI flag: a command line has no view to show it in.
    preview: bool = option(False, "show the segmentation growing in a temporary preview while the automaton runs",
                           cli=False)

    def __post_init__(self) -> None:
        validate(self)

    def inference_keywords(self) -> dict[str, Any]:
        """Keyword arguments of ``MedNCASegmentLib.inference.segment`` for these settings."""
        return {"runs": self.runs, "seed": self.seed, "global_steps": self.global_steps,
                "refinement_steps": self.refinement_steps, "downscale": self.downscale, "mirror": self.mirror}
