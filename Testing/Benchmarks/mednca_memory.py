"""Med-NCA's memory as a user meets it (issue 16, item 4): peak RSS of ``mednca-segment`` against
the volume's size, and RSS over many runs in one long-lived process; prints tables.

    PYTHONPATH=Resources/Python:MedNCASegment python Testing/Benchmarks/mednca_memory.py \
        --before adfda68 --json runs/mednca_memory.json

Every figure is measured for this checkout ("after") and, with ``--before COMMIT``, for that
commit too (checked out into a temporary git worktree; ``adfda68`` is main just before the
fast inference path), each in fresh processes, in the same run:

- **Peak RSS against size**: ``python -m MedNCASegmentLib.cli VOLUME -o DIR --runs 1`` (and
  ``--mode crop`` where the command has it, so that the whole volume goes through the
  automaton rather than two located boxes) on volumes of :data:`SIZES` voxels: the BraTS FLAIR
  ``brats_2013_pat0001_1`` zoomed linearly to each shape, 1 mm voxels, written as NIfTI. The
  peak is the child's ``ru_maxrss`` (``os.wait4``), so it includes Python, torch, slicer-core,
  loading the file and writing the ``.seg.nrrd``. One run: the fast path's accumulators do not
  grow with the number of runs (the per-run path's did not either). The model's own steps: fewer
  steps would save time but change the result, and a large noisy result costs far more memory
  when it is written (Slicer's closed-surface representation) than the automaton does.
- **A long session**: one process segments :data:`RETENTION_SHAPES`-sized crops of the same
  FLAIR (each mostly inside the head), ``--retention-runs`` of them in a fixed random order
  (seed 2026), through the logic API (``MedNCASegmentLogic.segment``, one run each, the
  result node removed after each), and records its RSS (``measurement.current_mib``) after every
  run: what Slicer or the web app holds.

A fitted line (least squares over the sizes) gives the fixed and per-voxel cost of each
version, the figures behind ``MedNCASegmentLib.input_size.BYTES_PER_VOXEL``. Times are printed for
orientation only: other processes on the machine change them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measurement import current_mib
from mednca_speed import SIZES  # (K, J, I) voxels, as in the issue: the same sizes as the inference-level table

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = Path(os.environ.get("EFFSEG_DATA", REPO.parent / "shared" / "data"))
SOURCE = DATA / "BraTS_sample" / "brats_2013_pat0001_1" / "Flair_subtrMeanDivStd.nii.gz"
# A volume small enough that the peak is the command's own (imports, model, scene): the
# baseline that the fitted line's fixed part is compared with.
STARTUP = ("64x64x16", (16, 64, 64))
# Ranges of the long session's random crops (K, J, I voxels of the 1 mm FLAIR).
RETENTION_SHAPES = ((16, 48), (48, 160), (48, 160))
MIB = 1024 * 1024


def _paths(checkout: Path) -> str:
    return os.pathsep.join(str(checkout / p) for p in ("Resources/Python", "MedNCASegment"))


def write_volumes(folder: Path) -> dict[str, Path]:
    """The FLAIR zoomed to each of :data:`SIZES`, 1 mm voxels, as NIfTI files in ``folder``."""
    import nibabel
    import numpy as np
    from scipy import ndimage

    flair = np.asarray(nibabel.load(str(SOURCE)).dataobj, dtype=np.float32)  # IJK
    paths = {}
    for name, shape_kji in [*SIZES.items(), STARTUP]:
        shape_ijk = shape_kji[::-1]
        zoomed = ndimage.zoom(flair, [t / s for t, s in zip(shape_ijk, flair.shape, strict=True)], order=1)
        zoomed = np.ascontiguousarray(zoomed[: shape_ijk[0], : shape_ijk[1], : shape_ijk[2]])
        paths[name] = folder / f"volume_{name.replace('^', '')}.nii.gz"
        nibabel.save(nibabel.Nifti1Image(zoomed, np.diag([-1.0, -1.0, 1.0, 1.0])), str(paths[name]))
    return paths


def peak_of_command(command: list[str], environment: dict[str, str]) -> dict:
    """Run ``command``; its exit status, wall seconds and peak RSS (MiB, ``ru_maxrss``)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": process.returncode, "seconds": time.perf_counter() - started,
            "peak_mib": usage.ru_maxrss / 1024, "tail": output[-400:]}


def session_worker(count: int, threads: int) -> dict:
    """In this process: ``count`` one-run segmentations of random crops; RSS (MiB) after each."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    import slicer.util as util
    from EfficientSegmentationCommon import scene as scene_module
    from EfficientSegmentationCommon.scene import create_scene, load_volume
    from MedNCASegmentLib.logic import MedNCASegmentLogic
    from MedNCASegmentLib import settings as settings_module

    scene = create_scene()
    flair = load_volume(scene, str(SOURCE), "flair")
    array = util.arrayFromVolume(flair).copy()
    keywords = {"runs": 1}
    if "mode" in settings_module.MedNCASettings.__dataclass_fields__:
        keywords["mode"] = "crop"
    logic = MedNCASegmentLogic(scene)
    rng = np.random.default_rng(2026)
    rss, seconds, shapes = [current_mib()], [], []
    for _ in range(count):
        while True:  # a crop mostly inside the head (a crop of background is refused as constant)
            shape = [int(rng.integers(low, high + 1)) for low, high in RETENTION_SHAPES]
            corner = [int(rng.integers(0, n - s + 1)) for n, s in zip(array.shape, shape, strict=True)]
            crop = array[tuple(slice(c, c + s) for c, s in zip(corner, shape, strict=True))]
            if (crop > array.min()).mean() > 0.5:
                break
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "crop")
        volume.SetSpacing(flair.GetSpacing())
        util.updateVolumeFromArray(volume, np.ascontiguousarray(crop))
        started = time.perf_counter()
        result = logic.segment(volume, **keywords)
        seconds.append(time.perf_counter() - started)
        remove = getattr(scene_module, "remove_node", None)
        for node in (result.segmentation, result.uncertainty, volume):
            if node is not None:
                remove(scene, node) if remove else scene.RemoveNode(node)
        del result
        rss.append(current_mib())
        shapes.append(shape)
    return {"rss_mib": rss, "seconds": seconds, "shapes": shapes}


def measure(checkout: Path, label: str, volumes: dict[str, Path], threads: int, retention_runs: int,
            work: Path) -> dict:
    environment = {**os.environ, "PYTHONPATH": _paths(checkout), "OMP_NUM_THREADS": str(threads)}
    help_text = subprocess.run([sys.executable, "-m", "MedNCASegmentLib.cli", "--help"], env=environment,
                               capture_output=True, text=True).stdout
    mode = ["--mode", "crop"] if re.search(r"--mode\b", help_text) else []  # not "--model"
    sizes = {}
    for name, path in volumes.items():
        out = work / f"{label}_{name.replace('^', '')}"
        command = [sys.executable, "-m", "MedNCASegmentLib.cli", str(path), "-o", str(out), "--runs", "1",
                   "--threads", str(threads), *mode]
        sizes[name] = peak_of_command(command, environment)
        print(f"{label} {name}: {sizes[name]['peak_mib']:.0f} MiB, {sizes[name]['seconds']:.0f} s, "
              f"rc {sizes[name]['rc']}", file=sys.stderr, flush=True)
    session = None
    if retention_runs:
        command = [sys.executable, str(Path(__file__).resolve()), "--session-worker", str(retention_runs),
                   "--threads", str(threads)]
        completed = subprocess.run(command, env=environment, capture_output=True, text=True)
        if completed.returncode:
            print(completed.stderr[-2000:], file=sys.stderr)
        else:
            session = json.loads(completed.stdout.strip().splitlines()[-1])
        print(f"{label} session done", file=sys.stderr, flush=True)
    return {"sizes": sizes, "session": session}


def fit(sizes: dict) -> tuple[float, float] | None:
    """Least-squares fixed MiB and bytes per voxel over the sizes that finished."""
    import numpy as np

    points = [(float(np.prod(SIZES[name])), row["peak_mib"]) for name, row in sizes.items()
              if row["rc"] == 0 and name in SIZES]
    if len(points) < 2:
        return None
    voxels, peaks = np.array(points).T
    slope, intercept = np.polyfit(voxels, peaks, 1)
    return float(intercept), float(slope * MIB)


def render(report: dict) -> str:
    labels = list(report["versions"])
    lines = ["## Peak RSS of `mednca-segment --runs 1` against the volume's size", "",
             "| volume | voxels | " + " | ".join(f"{label}: peak MiB | {label}: s" for label in labels) + " |",
             "|---|---:|" + "---:|---:|" * len(labels)]
    shapes = {STARTUP[0]: STARTUP[1], **SIZES}
    measured = [name for name in shapes if any(name in v["sizes"] for v in report["versions"].values())]
    for name in measured:
        shape = shapes[name]
        voxels = shape[0] * shape[1] * shape[2]
        cells = []
        for label in labels:
            row = report["versions"][label]["sizes"].get(name)
            cells += [f"{row['peak_mib']:,.0f}" if row and row["rc"] == 0 else "failed",
                      f"{row['seconds']:.0f}" if row else ""]
        lines.append(f"| {name} | {voxels / 1e6:.2f} M | " + " | ".join(cells) + " |")
    lines.append("")
    for label in labels:
        sizes = report["versions"][label]["sizes"]
        line = fit(sizes)
        startup = sizes.get(STARTUP[0])
        if line and startup and startup["rc"] == 0:
            lines.append(f"- {label}: about {line[0]:,.0f} MiB + {line[1]:.1f} bytes per voxel (least squares); "
                         f"the command alone (a {STARTUP[0]} volume) peaks at {startup['peak_mib']:,.0f} MiB, "
                         f"so a run adds about {line[0] - startup['peak_mib']:,.0f} MiB + {line[1]:.1f} bytes per voxel.")
    sessions = {label: v["session"] for label, v in report["versions"].items() if v.get("session")}
    if sessions:
        count = len(next(iter(sessions.values()))["seconds"])
        lines += ["", f"## RSS in one process over {count} one-run segmentations of random crops", "",
                  "| version | before the first | after 1 | after 10 | after 25 | after the last | max | median s per run |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        import numpy as np

        for label, session in sessions.items():
            rss = session["rss_mib"]
            pick = [rss[min(i, len(rss) - 1)] for i in (0, 1, 10, 25, len(rss) - 1)]
            lines.append(f"| {label} | " + " | ".join(f"{v:,.0f}" for v in pick) + f" | {max(rss):,.0f} | "
                         f"{np.median(session['seconds']):.2f} |")
    lines += ["", f"Threads: {report['threads']}; volumes: {SOURCE.relative_to(DATA)} zoomed, 1 mm."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=None, help="a commit to measure beside this checkout")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--retention-runs", type=int, default=50)
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated subset of {', '.join(SIZES)}")
    parser.add_argument("--only", choices=("before", "after"), default=None, help="measure one version only")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--session-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.session_worker is not None:
        print(json.dumps(session_worker(args.session_worker, args.threads)))
        return 0
    chosen = [s.strip() for s in args.sizes.split(",") if s.strip()]
    report: dict = {"threads": args.threads, "versions": {}}
    with tempfile.TemporaryDirectory(prefix="mednca_memory_") as folder:
        work = Path(folder)
        volumes = {name: path for name, path in write_volumes(work).items() if name in (*chosen, STARTUP[0])}
        versions = {}
        if args.only != "before":
            versions["after"] = REPO
        if args.before and args.only != "after":
            versions[f"before ({args.before})"] = work / "before"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(work / "before"), args.before],
                           check=True, capture_output=True)
        try:
            for label, checkout in versions.items():
                report["versions"][label] = measure(checkout, label.split(" ")[0], volumes, args.threads,
                                                    args.retention_runs, work)
                if args.json:
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps(report, indent=1))
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "before")],
                               capture_output=True)
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
