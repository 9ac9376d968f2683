"""What every headless command-line segmenter shares: a progress bar, writing results, a summary.

One bad input must not stop a batch: each input is processed on its own, its error printed
with the file name, and the command exits non-zero at the end if any input failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .scene import create_scene
from .segmentation_output import save_segmentation
from .settings import settings_from_arguments
from .torch_setup import check_device

FORMATS = ("seg.nrrd", "nii.gz")


def thread_count(text: str) -> int:
    """``--threads``: a positive number of CPU threads (argparse type; a clear error otherwise)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of CPU threads, not {text!r}")
    return count


def output_folder(text: str) -> Path:
    """``-o``: a folder name (argparse type). An empty one is refused rather than read as the
    current folder: ``-o "$OUT"`` with ``OUT`` unset would otherwise scatter results where the
    command happens to run."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty (an unset shell variable?); name a folder, or '.' for the "
                                         "current one")
    return Path(text)


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
    flags, check the device and find the model. Raises ValueError (ModelError included) naming a
    bad setting, device or model, or an output folder that cannot be written
    (:func:`output_folder_problem`), before any input is read."""
    output_dir = getattr(arguments, "output_dir", None)
    problem = output_folder_problem(Path(output_dir)) if output_dir is not None else None
    if problem:
        raise ValueError(f"cannot write to the output folder (-o): {problem}; give a folder you can write to, "
                         "new or existing")
    if getattr(arguments, "threads", None):
        import torch

        torch.set_num_threads(arguments.threads)
    scene = create_scene()
    logic = logic_class(scene, closed_surface=False)  # files only: no 3D view to show
    for warning in logic.registry.warnings:  # a broken user registry: its models are skipped
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    settings = settings_from_arguments(settings_class, arguments)
    if hasattr(settings, "device"):  # once, before any input (ValueError saying what is available)
        settings = dataclasses.replace(settings, device=check_device(settings.device))
    return CommandSession(scene, logic, settings, logic.model_entry(settings.model))


def output_folder_problem(folder: Path) -> str | None:
    """Why results cannot be written under ``folder`` ("/x is a file", "/x/y lies under /x, which
    is a file", "/x does not let this user write there"), or None. The commands check it before
    any input is read, so that a batch does not fail at its first result (or, for the
    ``--volumes`` table, after its last), minutes in. A folder that does not exist yet is judged
    by the nearest one on its path that does (it is made when writing); a full disk shows only
    when writing (``write_result``)."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{folder} is a file" if existing == folder else f"{folder} lies under {existing}, which is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} does not let this user write there"
    return None


def check_target(path: Path, inputs: Sequence[str | Path] = ()) -> None:
    """Raise OutputError when a folder holds the result's file name (``write_result`` could not
    replace it) or a ``x.nii`` lies where a ``x.nii.gz`` result would go (``input_files.shadowing_file``:
    Slicer would read that file for the result), InputVolumeError when the result would be written
    over one of the ``inputs``: checked before a case is segmented, so the run is not spent in vain."""
    from .errors import OutputError
    from .input_files import shadowing_file

    refuse_overwriting_input(path, inputs)
    shadow = shadowing_file(path)
    if shadow is not None:
        raise OutputError(f"The result '{path}' would lie beside '{shadow}', and Slicer's NIfTI reader would then read "
                          f"the voxels of '{os.path.basename(shadow)}' for it. Choose another output folder (-o) or "
                          "format (--format).")
    if path.is_dir():
        raise OutputError(f"The result cannot be written to '{path}': a folder of that name is there. Move or "
                          "rename that folder, or choose another output folder (-o).")


def output_path(output_dir: Path, name: str, fmt: str) -> Path:
    """``OUTDIR/<name>.seg.nrrd`` or ``OUTDIR/<name>.nii.gz``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format '{fmt}'; choose one of {', '.join(FORMATS)}")
    return Path(output_dir) / f"{name}.{fmt}"


SEGMENTATION_SUFFIX = ".seg.nrrd"


def is_segmentation(path: str | Path) -> bool:
    """Whether ``path`` names a segmentation file (``*.seg.nrrd``, what these commands write)."""
    return str(path).lower().endswith(SEGMENTATION_SUFFIX)


def write_result(result, path: Path, reference_volume=None, inputs: Sequence[str | Path] = ()) -> Path:
    """Save a run's result (either method's: it has ``segmentation``, ``labels`` and ``geometry``)
    as a ``.seg.nrrd`` segmentation, or as a ``.nii.gz`` label map with the segments' label
    values: on the grid of the file ``reference_volume`` (the first input) was read from when
    the result's grid is that grid up to axis order and flips (same shape, voxel order and
    affine as the file; see ``input_files.save_labels_nifti``), else on the result's grid (an
    output grid the user chose).

    Raises InputVolumeError, writing nothing, when ``path`` is one of the ``inputs`` files (e.g.
    ``-o .`` and ``--format nii.gz`` beside ``scan.nii.gz``): the input is never overwritten;
    OutputError, leaving any earlier result whole, when the result cannot be written there.
    """
    from .errors import OutputError

    refuse_overwriting_input(path, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside, then renamed: a run stopped or failing while writing (Ctrl-C, a full disk)
    # leaves no truncated result, and an earlier result at ``path`` stays whole until replaced.
    partial = path.with_name(f".partial-{os.getpid()}-{path.name}")
    try:
        if is_segmentation(path):
            save_segmentation(result.segmentation, partial)
        else:
            write_labels(result.labels, result.geometry, partial, reference_volume)
        os.replace(partial, path)
    except OSError as error:
        raise OutputError(f"The result could not be written to '{path}': {_write_failure_reason(error)}. Check that "
                          "the output folder (-o) is writable, has space, and holds no folder of that name.") from error
    finally:
        if partial.exists():
            partial.unlink()
    return path


def _write_failure_reason(error: BaseException | None) -> str:
    """The operating system's reason for a failed write ("No space left on device"), taken along
    the chain of errors so that the hidden files written first are not named; a plain reason when
    none gives one (VTK's writers do not)."""
    while error is not None:
        if isinstance(error, OSError) and error.strerror:
            return error.strerror
        error = error.__cause__ or error.__context__
    return "the file could not be written"


def write_labels(labels_kji, geometry, path: Path, reference_volume=None) -> Path:
    """Write a label map (KJI, on ``geometry``) to ``path`` (``.nii.gz``), on the grid of the file
    ``reference_volume`` was read from when ``geometry`` is that grid up to axis order and flips
    (exact voxel mapping), else on ``geometry``."""
    from .input_files import inspect_file, save_labels_nifti, source_file

    path.parent.mkdir(parents=True, exist_ok=True)
    source_path = source_file(reference_volume) if reference_volume is not None else None
    source = inspect_file(source_path) if source_path else None
    save_labels_nifti(labels_kji, geometry, path, source if source is not None and not source.problem else None)
    return path


def refuse_overwriting_input(path: Path, inputs: Sequence[str | Path]) -> None:
    """Raise InputVolumeError when ``path`` is one of the ``inputs`` files: an input is never
    overwritten."""
    from .errors import InputVolumeError

    for given in inputs:
        if path.exists() and os.path.exists(given) and os.path.samefile(path, given):
            raise InputVolumeError(f"The result would be written over the input file '{given}': choose another "
                                   "output folder (-o) or format (--format).")


def replacing(path: Path) -> list[str]:
    """A note when ``path`` already holds a file, which the result about to be written there
    replaces: an earlier run's result (outputs of one run never share a name, see
    :func:`unique_names`), e.g. another case's whose FLAIR file had the same name."""
    return [f"replaced the earlier file {path}"] if path.exists() else []


def skip_results(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """``items`` without what these commands write (segmentations, ``*.seg.nrrd``; ``--volumes``
    tables, ``*.csv``), and a note for each one left out: a re-run over a folder that holds an
    earlier run's results (``scans/*`` with ``-o scans``) segments the scans, not the results."""
    notes, kept = [], []
    for item in items:
        if is_segmentation(item) and not os.path.isdir(item):
            notes.append(f"'{item}' is a segmentation (a result), not a scan; it is skipped.")
        elif str(item).lower().endswith(".csv") and not os.path.isdir(item):
            notes.append(f"'{item}' is a table, not a scan; it is skipped.")
        else:
            kept.append(item)
    return kept, notes


def skip_output_folder(items: Sequence[str], output_dir: Path,
                       is_input: Callable[[str], bool] = lambda folder: False) -> tuple[list[str], list[str]]:
    """``items`` without the output folder itself, and a note if it was there: ``scans/*`` with
    ``-o scans/out`` matches the folder of an earlier run's results, which is not an input. A
    folder that ``is_input`` (an OSS-Net case folder holding its scans) is kept."""
    kept = [item for item in items if not (os.path.isdir(item) and os.path.exists(output_dir)
                                           and os.path.samefile(item, output_dir) and not is_input(item))]
    return kept, [f"'{item}' is the output folder (-o), not an input; it is skipped." for item in items
                  if item not in kept]


def unique_names(items: Sequence[str], name_of: Callable[[str], str]) -> tuple[list[str], dict[str, str], list[str]]:
    """Distinct inputs, a distinct output name for each, and notes saying what was changed.

    ``name_of`` gives an input's natural name (its file name without extensions, or a case
    folder's name). Inputs given twice (the same file) are kept once. Inputs of the same name
    in different folders (``sub-01/anat/T1w.nii.gz``, ``sub-02/anat/T1w.nii.gz``) are named
    after the folder names that differ (``sub-01_T1w``, ``sub-02_T1w``), so no output
    overwrites another. Returns (items, {item: name}, notes).
    """
    notes, kept, seen = [], [], {}
    for item in items:
        real = os.path.realpath(item)
        if real in seen:
            notes.append(f"'{item}' was given more than once; it is segmented once.")
            continue
        seen[real] = item
        kept.append(item)
    names = {item: name_of(item) for item in kept}
    groups = defaultdict(list)
    for item in kept:
        groups[names[item].lower()].append(item)  # case-insensitive file systems would collide too
    for group in groups.values():
        if len(group) < 2:
            continue
        folders = [Path(os.path.abspath(item)).parent.parts for item in group]
        if len(set(folders)) == 1:  # one folder (case.nii.gz, case.nrrd): numbered below, with their own note
            continue
        common_start = len(os.path.commonprefix(folders))
        common_end = len(os.path.commonprefix([tuple(reversed(parts[common_start:])) for parts in folders]))
        for item, parts in zip(group, folders, strict=True):
            differing = parts[common_start:len(parts) - common_end]
            names[item] = "_".join((*differing, names[item]))
        notes.append(f"{len(group)} inputs are named '{name_of(group[0])}'; their outputs are named after the folders "
                     f"that differ: {', '.join(names[item] for item in group)}.")
    taken: set[str] = set()
    for item in kept:  # still equal (e.g. case.nii.gz and case.nrrd in one folder): number them
        name, number = names[item], 2
        while name.lower() in taken:
            name, number = f"{names[item]}_{number}", number + 1
        if name != names[item]:
            notes.append(f"'{item}' is written as '{name}': another input has its name.")
            names[item] = name
        taken.add(name.lower())
    return kept, names, notes


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
    # The result's warnings (an input problem, an empty or likely wrong result, no quality score),
    # printed under its line; a result with any is not reported "ok".
    warnings: Sequence[str] = ()
    notes: Sequence[str] = ()  # facts about the run (e.g. an input resampled), printed under its line


REPORT_HELP = """\
what it prints, one line per input (per case for ossnet-segment):
  ok      segmented, and nothing questions the result
  CHECK   segmented, with warnings (printed under the line): look at the result before using it
  FAILED  not segmented; the line says why, and no result was written for this input
  STOPPED interrupted by Ctrl-C; nothing was written for this input, and the batch stops
then a summary with the counts; "note:" lines are facts, not warnings (e.g. an input renamed,
skipped or resampled, an earlier file replaced). Exit status 0 when every input was segmented
(CHECK included), 1 when any failed, 2 for a wrong argument, 130 when stopped with Ctrl-C (the
results written so far are kept).
"""


# Exit status after Ctrl-C, as a shell reports a command stopped by SIGINT (128 + 2).
INTERRUPTED = 130


def run_batch(items: Sequence[str], process: Callable[[str], BatchOutcome], names: dict[str, str] | None = None) -> int:
    """Process every item, report each, print a summary; exit status 1 if any failed.

    Each item's line starts with ``ok`` (segmented, nothing questions the result), ``CHECK``
    (segmented with warnings, printed under the line: look at the result before using it) or
    ``FAILED`` (``STOPPED`` for the one Ctrl-C interrupted); the summary counts the ones to check.

    ``names`` (item -> name) names the items in the report (default: the item's base name).
    """
    from .errors import InputVolumeError, OutputError

    outcomes = []
    interrupted = False
    for item in items:
        try:
            outcome = process(item)
        except KeyboardInterrupt:  # Ctrl-C: stop here, say what was done, keep the results written
            interrupted = True
            outcome = BatchOutcome((names or {}).get(item, os.path.basename(item)), False,
                                   "interrupted (Ctrl-C); nothing was written for it")
        except Exception as error:  # one bad input must not stop the others
            shown_as_is = isinstance(error, (InputVolumeError, OutputError))
            detail = str(error) if shown_as_is else f"{type(error).__name__}: {error}"
            outcome = BatchOutcome((names or {}).get(item, os.path.basename(item)), False, detail)
        outcomes.append(outcome)
        status = ("STOPPED" if interrupted else "FAILED" if not outcome.ok else "CHECK " if outcome.warnings
                  else "ok    ")
        print(f"{status} {outcome.name}: {outcome.detail}", flush=True)
        for note in outcome.notes:
            print(f"       note: {note}", flush=True)
        for warning in outcome.warnings:
            print(f"       warning: {warning}", flush=True)
        if interrupted:
            break
    succeeded = [o for o in outcomes if o.ok]
    mean_seconds = sum(o.seconds for o in succeeded) / len(succeeded) if succeeded else 0.0
    to_check = sum(bool(o.warnings) for o in succeeded)
    checks = ("" if not to_check else " (1 with warnings: check it)" if to_check == 1
              else f" ({to_check} with warnings: check them)")
    timing = f"; {mean_seconds:.1f} s per volume" if succeeded else ""
    if interrupted:
        print(f"summary: interrupted; {len(succeeded)} of {len(items)} segmented{checks}, "
              f"{len(outcomes) - len(succeeded) - 1} failed, 1 interrupted, {len(items) - len(outcomes)} not started"
              f"{timing}",
              flush=True)
        return INTERRUPTED
    print(f"summary: {len(succeeded)} of {len(outcomes)} segmented{checks}, {len(outcomes) - len(succeeded)} failed"
          f"{timing}", flush=True)
    return 0 if len(succeeded) == len(outcomes) else 1
