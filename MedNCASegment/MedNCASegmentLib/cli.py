"""``mednca-segment``: segment NIfTI or NRRD volumes headless with Med-NCA.

    mednca-segment ../shared/data/Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz -o out

Runs the module's own logic on a slicer-core MRML scene and writes ``OUTDIR/<name>.seg.nrrd``
(or, with ``--format nii.gz``, a label map with the model card's label values: 1 anterior,
2 posterior) in the input's geometry. Prints the quality score per volume and a summary.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from EfficientSegmentationCommon import batch
from EfficientSegmentationCommon.scene import load_volume, name_from_path
from EfficientSegmentationCommon.settings import add_arguments

from .logic import MedNCASegmentLogic
from .settings import MedNCASettings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mednca-segment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="volumes to segment (.nii.gz, .nii, .nrrd, ...)")
    parser.add_argument("-o", "--output-dir", type=Path, required=True)
    add_arguments(parser, MedNCASettings)
    parser.add_argument("--format", choices=batch.FORMATS, default="seg.nrrd")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        session = batch.start_command(args, MedNCASegmentLogic, MedNCASettings)
        scene, logic, settings, entry = session.scene, session.logic, session.settings, session.entry
    except ValueError as error:  # an invalid setting or a model problem (ModelError)
        print(f"mednca-segment: {error}", file=sys.stderr)
        return 2
    inputs, names, notes = batch.unique_names(args.inputs, name_from_path)
    print(f"model: {entry.id} ({entry.title}); {settings.runs} runs; output: {args.output_dir}", flush=True)
    for note in notes:
        print(f"note: {note}", flush=True)

    def process(path: str) -> batch.BatchOutcome:
        volume = load_volume(scene, path, names[path])
        try:
            result = logic.segment(volume, settings, progressCallback=batch.ProgressBar(volume.GetName()))
            written = batch.write_result(result, batch.output_path(args.output_dir, volume.GetName(), args.format),
                                         volume)
            if any(score is None for score in result.quality.values()):
                quality = f"unavailable with {settings.runs} run"
            else:
                quality = ", ".join(f"{name} {score:.3f}" for name, score in result.quality.items())
            warning = " WARNING: likely failure" if result.likely_failure else ""
            return batch.BatchOutcome(volume.GetName(), True,
                                      f"{written} ({result.seconds:.1f} s; quality score NQM: {quality}){warning}",
                                      result.seconds, result.warnings)
        finally:
            scene.Clear(0)  # keep memory flat over long batches

    return batch.run_batch(inputs, process, names)


if __name__ == "__main__":
    sys.exit(main())
