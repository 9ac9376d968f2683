"""``ossnet-segment``: segment brain-tumour MRI headless with OSS-Net, at the resolution you choose.

    ossnet-segment --input FLAIR.nii.gz T1C.nii.gz -o out              # one case, files in the card's order
    ossnet-segment --input ../shared/data/BraTS_sample/brats_2013_pat0006_1 -o out --resolution 2
    ossnet-segment --input CASE1/ CASE2/ -o out --format nii.gz          # a batch of case folders

A case folder holds one file per input the model card lists, recognised by name (``flair``;
``t1c``, ``t1ce`` or ``t1gd`` for contrast T1). Runs the module's own logic on a slicer-core
MRML scene and writes ``OUTDIR/<case>.seg.nrrd`` or, with ``--format nii.gz``, a label map on
the output grid (label 1 whole tumour). ``--resolution 2`` segments on a grid twice as fine as
the input's (0.5: half as fine); ``--spacing`` gives the output spacing in mm instead.
``--chunk-size`` bounds the points decoded at once, and so the memory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from EfficientSegmentationCommon import batch
from EfficientSegmentationCommon.errors import InputVolumeError, check_the_path
from EfficientSegmentationCommon.scene import load_volume, name_from_path
from EfficientSegmentationCommon.settings import add_arguments

from .input_names import fragments_of, is_input
from .logic import OSSNetSegmentLogic
from .settings import OSSNetSettings

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ossnet-segment", description=__doc__, epilog=batch.REPORT_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", "-i", nargs="+", required=True,
                        help="the input files of one case in the model card's order, or one or more case folders")
    parser.add_argument("-o", "--output-dir", type=batch.output_folder, required=True,
                        help="folder for the results (created if missing); an input's result is <name>.<format>")
    add_arguments(parser, OSSNetSettings)
    parser.add_argument("--format", choices=batch.FORMATS, default="seg.nrrd",
                        help="seg.nrrd: a Slicer segmentation; nii.gz: a label map with the model card's label values "
                             "on the result's grid (default: %(default)s)")
    parser.add_argument("--threads", type=batch.thread_count, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    return parser.parse_args(argv)


def _is_volume_file(path: Path) -> bool:
    """A scan file: a volume's suffix, and not a segmentation (an earlier result written there)."""
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES) and not batch.is_segmentation(path)


def case_files(folder: Path, inputs: Sequence[str]) -> list[Path]:
    """The files of a case folder for the model's ``inputs``, in that order; InputVolumeError
    when the folder is missing, or naming the input when none or several files match it."""
    if not folder.is_dir():
        raise InputVolumeError(f"No such case folder '{folder}'. {check_the_path(str(folder))}")
    candidates = [p for p in sorted(folder.iterdir()) if _is_volume_file(p)]
    files = []
    for name in inputs:
        matches = [p for p in candidates if is_input(p.name, name)]
        if len(matches) != 1:
            found = ", ".join(p.name for p in matches) or "none"
            hint = ""
            if not candidates and any(p.is_dir() for p in folder.iterdir()):
                hint = f" It holds folders: to segment each as a case, give them all (--input {folder / '*'})."
            raise InputVolumeError(f"Case folder {folder} must hold exactly one {name} volume "
                                   f"(a file name containing {' or '.join(fragments_of(name))}); found: {found}.{hint}")
        files.append(matches[0])
    for index, file in enumerate(files):
        if file in files[:index]:
            raise InputVolumeError(f"In case folder {folder}, '{file.name}' is the only file for both "
                                   f"{inputs[files.index(file)]} and {inputs[index]} (its name matches both): "
                                   "give one 3D file per input, named after its sequence.")
    return files


def _holds_case(folder: Path, inputs: Sequence[str]) -> bool:
    """Whether ``folder`` holds one file for each of the model's ``inputs`` (:func:`case_files`)."""
    try:
        case_files(folder, inputs)
    except InputVolumeError:
        return False
    return True


def cases(inputs: Sequence[str], model_inputs: Sequence[str]) -> tuple[dict[str, list[Path] | Path], list[str]]:
    """Case name -> the input files of one case, or a case folder per case; and notes.

    A folder's files are found when it is segmented (:func:`case_files`), so that a missing or
    incomplete folder fails alone, reported in the batch, as a bad file does in mednca-segment.
    A path without a volume file's suffix that does not exist counts as a missing case folder;
    among case folders, a file that is not a volume (``cases/*`` matching a notes.csv) is skipped
    with a note.
    Case folders of the same name (``siteA/case1``, ``siteB/case1``) are named after the folder
    names that differ (``siteA_case1``); a folder given twice is segmented once (see the notes).
    Raises InputVolumeError for files and folders mixed, a missing file, or the wrong number of files.
    """
    paths = [Path(p) for p in inputs]
    skipped = []
    if any(p.is_dir() for p in paths):  # case folders, e.g. cases/*: other files there are not cases
        skipped = [p for p in paths if p.is_file() and not p.name.lower().endswith(VOLUME_SUFFIXES)]
        paths = [p for p in paths if p not in skipped]
    folders = [p.is_dir() or (not p.exists() and not p.name.lower().endswith(VOLUME_SUFFIXES)) for p in paths]
    if all(folders):
        unique, names, notes = batch.unique_names([str(p) for p in paths], lambda p: Path(p).name)
        notes += [f"'{p}' is not a case folder nor a volume file; it is skipped." for p in skipped]
        return {names[folder]: Path(folder) for folder in unique}, notes
    if any(folders):
        files = ", ".join(str(p) for p, folder in zip(paths, folders, strict=True) if not folder)
        raise InputVolumeError(f"Give either the input files of one case or case folders, not both (files given "
                               f"among folders: {files}).")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InputVolumeError(f"No such file: {', '.join(missing)}. {check_the_path(missing[0])}")
    if len(paths) != len(model_inputs):
        raise InputVolumeError(f"The model needs {len(model_inputs)} input volumes, in this order: "
                               f"{', '.join(model_inputs)}; {len(paths)} given.")
    real = [p.resolve() for p in paths]
    for index, path in enumerate(real):
        if path in real[:index]:
            raise InputVolumeError(f"'{paths[index].name}' is given for both {model_inputs[real.index(path)]} and "
                                   f"{model_inputs[index]}: give each input its own file.")
    return {name_from_path(str(paths[0])): paths}, []  # named like the volume node load_volume makes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        session = batch.start_command(args, OSSNetSegmentLogic, OSSNetSettings)
        scene, logic, settings, entry = session.scene, session.logic, session.settings, session.entry
        # Among case folders (cases/* with -o cases/out) the output folder is no case, unless it
        # holds one (-i case -o case).
        inputs, skipped = batch.skip_output_folder(args.input, args.output_dir,
                                                   lambda folder: _holds_case(Path(folder), entry.inputs))
        work, notes = cases(inputs, entry.inputs)
        notes = skipped + notes
    except ValueError as error:  # an invalid setting, a model problem (ModelError) or a bad input
        print(f"ossnet-segment: {error}", file=sys.stderr)
        return 2
    if settings.output_spacing is not None:
        resolution = " x ".join(f"{s:g}" for s in settings.output_spacing) + " mm"
    else:
        resolution = f"{settings.resolution:g}x the input's"
    print(f"model: {entry.id} ({entry.title}); inputs {', '.join(entry.inputs)}; resolution {resolution}; "
          f"chunk {settings.chunk_size}; output: {args.output_dir}", flush=True)
    print("note: OSS-Net gives no quality score: 'ok' means the inputs passed their checks and the result is not "
          "empty, not that the result is right; look at each one.", flush=True)
    for note in notes:
        print(f"note: {note}", flush=True)

    def process(name: str) -> batch.BatchOutcome:
        given = work[name]
        files = case_files(given, entry.inputs) if isinstance(given, Path) else given
        try:
            # nii.gz: on the FLAIR file's own grid when the output grid is that grid (up to voxel order)
            target = batch.output_path(args.output_dir, name, args.format)
            batch.check_target(target, files)
            volumes = [load_volume(scene, str(path)) for path in files]
            result = logic.segment(volumes, settings, progressCallback=batch.ProgressBar(name))
            replaced = batch.replacing(target)
            path = batch.write_result(result, target, volumes[0], files)
            shape = result.geometry.shape_ijk
            if path.name.endswith(".nii.gz"):  # the grid as written, which may be the file's voxel order
                import nibabel

                shape = nibabel.load(str(path)).shape
            grid = " x ".join(str(n) for n in shape)
            return batch.BatchOutcome(name, True, f"{path} ({grid} voxels; {result.seconds:.1f} s; "
                                                  f"{result.decoded_fraction:.2%} of the voxels decoded)",
                                      result.seconds, result.warnings, [*result.details, *replaced])
        finally:
            scene.Clear(0)  # keep memory flat over long batches

    return batch.run_batch(list(work), process, {name: name for name in work})


if __name__ == "__main__":
    sys.exit(main())
