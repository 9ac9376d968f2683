"""``mednca-segment``: segment NIfTI or NRRD volumes headless with Med-NCA.

    mednca-segment ../shared/data/Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz -o out

Runs the module's own logic on a slicer-core MRML scene and writes ``OUTDIR/<name>.seg.nrrd``
(or, with ``--format nii.gz``, a label map with the model card's label values: 1 anterior,
2 posterior; on a whole head 1-2 left, 3-4 right) in the input's geometry. Prints the quality
score and the volumes per volume, and a summary.

On a whole head (``--mode auto``, the default, with a field of view of 80 mm or more, or
``--mode head``) both hippocampi are located and segmented; a crop around one hippocampus (the
MSD crops) is segmented as it is. ``--roi R A S SIZE_R SIZE_A SIZE_S`` segments one hippocampus
in a box given in RAS millimetres (centre and size), e.g. where localisation fails.
``--volumes volumes.csv`` writes one row per input: mm^3 per segment, per side and in total, and
the left/right asymmetry index (L-R)/((L+R)/2) x 100 %.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from EfficientSegmentationCommon import batch
from EfficientSegmentationCommon.scene import load_volume, name_from_path
from EfficientSegmentationCommon.settings import add_arguments

from .logic import MedNCASegmentLogic
from .panel import structure_spread_values
from .settings import MedNCASettings
from .wholehead import HippocampusVolumes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mednca-segment", description=__doc__, epilog=batch.REPORT_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="volumes to segment (.nii.gz, .nii, .nrrd, ...)")
    parser.add_argument("-o", "--output-dir", type=batch.output_folder, required=True,
                        help="folder for the results (created if missing); an input's result is <name>.<format>")
    add_arguments(parser, MedNCASettings)
    parser.add_argument("--roi", type=float, nargs=6, metavar=("R", "A", "S", "SIZE_R", "SIZE_A", "SIZE_S"),
                        default=None, help="segment one hippocampus in this box: centre and size in RAS mm")
    parser.add_argument("--volumes", type=_csv_path, default=None, metavar="CSV",
                        help="write the volumes (mm3) and the asymmetry index of every input to this .csv file")
    parser.add_argument("--format", choices=batch.FORMATS, default="seg.nrrd",
                        help="seg.nrrd: a Slicer segmentation; nii.gz: a label map with the model card's label values "
                             "on the input's grid (default: %(default)s)")
    parser.add_argument("--threads", type=batch.thread_count, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    return parser.parse_args(argv)


def _csv_path(text: str) -> Path:
    """``--volumes``: a .csv file, so that a slip (an input's name, a folder) cannot overwrite a
    scan or fail only after the whole batch has run."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is a folder; give a .csv file name")
    if path.suffix.lower() != ".csv":
        raise argparse.ArgumentTypeError(f"'{text}' is not a .csv file name")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.roi and min(args.roi[3:]) <= 0:
        print(f"mednca-segment: --roi sizes must be positive, not {args.roi[3:]}", file=sys.stderr)
        return 2
    try:
        session = batch.start_command(args, MedNCASegmentLogic, MedNCASettings)
        scene, logic, settings, entry = session.scene, session.logic, session.settings, session.entry
    except ValueError as error:  # an invalid setting or a model problem (ModelError)
        print(f"mednca-segment: {error}", file=sys.stderr)
        return 2
    # The table is written last: a folder it cannot go into is said before the runs.
    problem = batch.output_folder_problem(args.volumes.absolute().parent) if args.volumes else None
    if problem:
        print(f"mednca-segment: cannot write the --volumes table {args.volumes}: {problem}; give a .csv file in a "
              "folder you can write to", file=sys.stderr)
        return 2
    # Earlier results, tables (the --volumes table among them) and the output folder are not scans.
    inputs, skipped = batch.skip_results(args.inputs)
    inputs, skipped_folder = batch.skip_output_folder(inputs, args.output_dir)
    if not inputs:
        print("mednca-segment: nothing to segment: " + " ".join(skipped + skipped_folder), file=sys.stderr)
        return 2
    inputs, names, notes = batch.unique_names(inputs, name_from_path)
    notes = skipped + skipped_folder + notes
    runs = f"{settings.runs} run" + ("s" if settings.runs != 1 else "")
    print(f"model: {entry.id} ({entry.title}); {runs}; output: {args.output_dir}", flush=True)
    for note in notes:
        print(f"note: {note}", flush=True)
    rows: list[dict[str, str]] = []

    def process(path: str) -> batch.BatchOutcome:
        row = {"input": path, "status": "failed", "likely failure": "", "mode": ""}
        rows.append(row)  # before loading: an input that cannot be read has its row too
        try:
            target = batch.output_path(args.output_dir, names[path], args.format)  # the volume's name
            batch.check_target(target, inputs)
            volume = load_volume(scene, path, names[path])
            roi = manual_roi(scene, args.roi) if args.roi else None
            result = logic.segment(volume, settings, roi=roi, progressCallback=batch.ProgressBar(volume.GetName()))
            replaced = batch.replacing(target)
            written = batch.write_result(result, target, volume, inputs)
            scored = all(score is not None for score in result.quality.values())
            flag = "yes" if result.likely_failure else "no" if scored else f"unknown ({settings.runs} run)"
            # As the printed line: "check" when any warning questions the result; they are the last column.
            row.update(volume_row(result.mode, result.volumes), status="check" if result.warnings else "ok",
                       **{"likely failure": flag})
            row["warnings"] = " | ".join(result.warnings)
            if not scored:
                quality = f"unavailable with {settings.runs} run"
            else:
                quality = ", ".join(f"{name} {score:.3f}" for name, score in result.quality.items())
                spread = structure_spread_values(result)
                quality += f"; spread inside the structure: {spread}" if spread else ""
            return batch.BatchOutcome(volume.GetName(), True,
                                      f"{written} ({result.seconds:.1f} s, {result.mode} mode; "
                                      f"{result.volumes.summary()}; quality score NQM: {quality})",
                                      result.seconds, result.warnings, [*result.details, *replaced])
        except KeyboardInterrupt:
            row.update(status="interrupted", warnings="interrupted (Ctrl-C)")
            raise
        except Exception as error:
            row["warnings"] = str(error)  # a failed row says why, as its printed line
            raise
        finally:
            scene.Clear(0)  # keep memory flat over long batches

    status = batch.run_batch(inputs, process, names)
    if args.volumes and status == batch.INTERRUPTED and args.volumes.exists():  # not replaced by a partial table
        print(f"volumes: not written (interrupted); the earlier table {args.volumes} is as it was", flush=True)
    elif args.volumes:
        write_volumes(args.volumes, rows)
        print(f"volumes: {args.volumes} ({len(rows)} row{'s' if len(rows) != 1 else ''})", flush=True)
    return status


def manual_roi(scene, values):
    """A markups ROI node from ``--roi R A S SIZE_R SIZE_A SIZE_S`` (RAS mm)."""
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "manual box")
    roi.SetCenter(*values[:3])
    roi.SetSize(*values[3:])
    return roi


def volume_row(mode: str, volumes: HippocampusVolumes) -> dict[str, str]:
    """A CSV row's values: the mode and each volume (mm3, 1 decimal; empty where it does not apply,
    as the asymmetry index of a crop or of two empty sides)."""
    row = {"mode": mode}
    for column, value in volumes.table().items():
        row[column] = "" if value is None or math.isnan(value) else f"{value:.1f}"
    return row


def write_volumes(path: Path, rows: list[dict[str, str]]) -> None:
    """One row per input (failed ones with their status and no volumes); the columns are the
    union of the rows' (crop and head inputs name their segments differently), the warnings last."""
    columns: list[str] = []
    for row in rows:
        columns += [column for column in row if column not in columns]
    columns.sort(key=lambda column: column == "warnings")  # last, whichever row came first
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
