"""What every headless command-line segmenter shares: a progress bar, writing results, a summary.

One bad input must not stop a batch: each input is processed on its own, its error printed
with the file name, and the command exits non-zero at the end if any input failed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .scene import create_scene
from .segmentation_output import save_labelmap, save_segmentation
from .settings import settings_from_arguments

FORMATS = ("seg.nrrd", "nii.gz")


@dataclass
class CommandSession:
    """What a command sets up before its inputs: a headless scene, the method's logic, the run's
    settings (from the flags) and the model they name."""

    scene: object
    logic: object
    settings: object
    entry: object  # registry.ModelEntry


def start_command(arguments, logic_class: type, settings_class: type) -> CommandSession:
    """Set torch's threads (``--threads``), make the scene and logic, read the settings from the
    flags and find the model. Raises ValueError (ModelError included) naming a bad setting or
    model, before any input is read."""
    if getattr(arguments, "threads", None):
        import torch

        torch.set_num_threads(arguments.threads)
    scene = create_scene()
    logic = logic_class(scene)
    settings = settings_from_arguments(settings_class, arguments)
    return CommandSession(scene, logic, settings, logic.model_entry(settings.model))


def output_path(output_dir: Path, name: str, fmt: str) -> Path:
    """``OUTDIR/<name>.seg.nrrd`` or ``OUTDIR/<name>.nii.gz``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format '{fmt}'; choose one of {', '.join(FORMATS)}")
    return Path(output_dir) / f"{name}.{fmt}"


def write_result(result, path: Path) -> Path:
    """Save a run's result (either method's: it has ``segmentation``, ``labels`` and ``geometry``)
    as a ``.seg.nrrd`` segmentation, or as a ``.nii.gz`` label map with the segments' label
    values on the result's grid (the input's, or the output grid the user chose)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".seg.nrrd"):
        save_segmentation(result.segmentation, path)
    else:
        save_labelmap(result.labels.astype("uint8"), result.geometry, path)
    return path


class ProgressBar:
    """A one-line text progress bar on stderr for a (fraction, message) progress callback."""

    def __init__(self, label: str, width: int = 30, stream=sys.stderr) -> None:
        self.label, self.width, self.stream = label, width, stream
        self.last = -1
        self.interactive = stream.isatty()

    def __call__(self, fraction: float, message: str) -> None:
        percent = int(fraction * 100)
        if percent == self.last and self.interactive:
            return
        if not self.interactive and percent // 10 == self.last // 10 and percent < 100:
            return  # logs get one line per 10 %
        self.last = percent
        filled = int(self.width * fraction)
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {percent:3d}% {message}"
        self.stream.write(("\r" + line.ljust(100)) if self.interactive else line + "\n")
        if percent >= 100 and self.interactive:
            self.stream.write("\n")
        self.stream.flush()


@dataclass
class BatchOutcome:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


def run_batch(items: Sequence[str], process: Callable[[str], BatchOutcome]) -> int:
    """Process every item, report each, print a summary; exit status 1 if any failed."""
    outcomes = []
    for item in items:
        try:
            outcome = process(item)
        except Exception as error:  # one bad input must not stop the others
            outcome = BatchOutcome(os.path.basename(item), False, f"{type(error).__name__}: {error}")
        outcomes.append(outcome)
        print(f"{'ok    ' if outcome.ok else 'FAILED'} {outcome.name}: {outcome.detail}", flush=True)
    succeeded = [o for o in outcomes if o.ok]
    mean_seconds = sum(o.seconds for o in succeeded) / len(succeeded) if succeeded else 0.0
    print(f"summary: {len(succeeded)} of {len(outcomes)} segmented, {len(outcomes) - len(succeeded)} failed; "
          f"{mean_seconds:.1f} s per volume", flush=True)
    return 0 if len(succeeded) == len(outcomes) else 1
