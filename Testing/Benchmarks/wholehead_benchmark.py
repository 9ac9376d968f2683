"""Whole-head Med-NCA: time and peak memory of localisation and of both sides, beside the
single-structure command on a hand-cropped box of the same case; prints a table (not a timed test).

    python Testing/Benchmarks/wholehead_benchmark.py --threads 2 --runs 10 --json runs/wholehead.json

Case: the MNI152 2009a template that nilearn ships (a whole brain, skull-stripped, 1 mm,
197x233x189), as stored (RAS), re-encoded LPS, and tilted by (12, -8, 15) degrees and resampled
onto the axis-aligned 0.8 mm grid that covers it (336x392x323 voxels, 42 million: more than a
typical 3D T1). Every figure comes from a fresh Python
process (this script with ``--worker``, see measurement.py), so each peak resident set size
belongs to one thing:

- ``locate``: :func:`MedNCASegmentLib.localization.locate_hippocampi` alone (seconds of the call;
  peak RSS of the process, and the increase over its peak before the call);
- ``head``: ``mednca-segment --mode head`` (localisation, both sides, volumes) on the whole head;
- ``crop``: ``mednca-segment --roi ...`` on a hand-placed 35 x 50 x 36 mm box (the median MSD crop)
  around the left hippocampus of the same case (centre from the Seitzman et al. 2018 hippocampus
  ROIs that nilearn ships): today's single-structure path, the baseline of the ratios.

Times are wall-clock with ``--threads`` torch threads; other processes on the machine slow them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from measurement import measure_in_fresh_process, peak_mib, publish, serve_worker

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SOURCES = (REPO / "Resources" / "Python", REPO / "MedNCASegment")
# Hand-placed box around the left hippocampus of the MNI152 template (RAS mm): centre between the
# Seitzman et al. 2018 hippocampal head (-25.6, -11.8, -21.5) and tail (-25.2, -38.8, -2.0) ROIs,
# size of the median MSD Task04 crop (35 x 50 x 36 voxels of 1 mm).
LEFT_BOX_RAS = (-25.4, -25.3, -11.8, 35.0, 50.0, 36.0)


def write_cases(folder: Path) -> dict[str, Path]:
    """The template as NIfTI files: as shipped (RAS), LPS, and tilted on a 0.8 mm scanner grid."""
    import nibabel
    import numpy as np
    from EfficientSegmentationCommon.geometry import VolumeGeometry
    from EfficientSegmentationCommon.grids import axis_aligned_grid
    from EfficientSegmentationCommon.resampling import resample
    from MedNCASegmentLib.localization import template_path
    from scipy.spatial.transform import Rotation

    source = nibabel.load(str(template_path()))
    array = np.asarray(source.dataobj, dtype=np.float32)
    cases = {"template RAS 1 mm": folder / "mni_ras.nii.gz", "template LPS 1 mm": folder / "mni_lps.nii.gz",
             "template tilted 0.8 mm": folder / "mni_tilted.nii.gz"}
    nibabel.save(nibabel.Nifti1Image(array, source.affine), cases["template RAS 1 mm"])
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = array.shape[0] - 1, array.shape[1] - 1
    nibabel.save(nibabel.Nifti1Image(array[::-1, ::-1].copy(), source.affine @ flip), cases["template LPS 1 mm"])
    geometry = VolumeGeometry(source.affine, array.shape[::-1])
    tilt = np.eye(4)
    tilt[:3, :3] = Rotation.from_euler("xyz", (12, -8, 15), degrees=True).as_matrix()
    tilted = VolumeGeometry(tilt @ geometry.ijk_to_ras, geometry.shape_kji)
    scanner = axis_aligned_grid(tilted, (0.8, 0.8, 0.8))
    resampled = resample(array.transpose(2, 1, 0), tilted, scanner)
    nibabel.save(nibabel.Nifti1Image(resampled.transpose(2, 1, 0).copy(), scanner.ijk_to_ras), cases["template tilted 0.8 mm"])
    return cases


def worker(spec: dict) -> dict:
    """One measurement in this fresh process."""
    import torch

    torch.set_num_threads(spec["threads"])
    if spec["what"] == "locate":
        import nibabel
        import numpy as np
        from EfficientSegmentationCommon.geometry import VolumeGeometry
        from MedNCASegmentLib.localization import locate_hippocampi

        image = nibabel.load(spec["path"])
        array = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)
        geometry = VolumeGeometry(image.affine, array.shape)
        before = peak_mib()
        started = time.perf_counter()
        result = locate_hippocampi(array, geometry)
        return {"seconds": time.perf_counter() - started, "peak_mib": peak_mib(), "added_mib": peak_mib() - before,
                "shape_kji": list(array.shape), "normalised_mi": result.normalised_mi}
    from MedNCASegmentLib.cli import main

    with tempfile.TemporaryDirectory() as output:
        argv = [spec["path"], "-o", output, "--runs", str(spec["runs"]), "--threads", str(spec["threads"])]
        argv += ["--mode", "head", "--volumes", str(Path(output) / "volumes.csv")] if spec["what"] == "head" else \
            ["--roi", *(str(v) for v in LEFT_BOX_RAS)]
        started = time.perf_counter()
        status = main(argv)
        seconds = time.perf_counter() - started
        volumes = (Path(output) / "volumes.csv").read_text() if spec["what"] == "head" else ""
    if status != 0:
        raise RuntimeError(f"mednca-segment failed on {spec['path']}")
    return {"seconds": seconds, "peak_mib": peak_mib(), "volumes_csv": volumes}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if serve_worker(argv, worker):
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="stochastic runs of Med-NCA (the shipped default: 10)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path[:0] = [str(path) for path in SOURCES]
    report: dict = {"threads": args.threads, "runs": args.runs, "locate": {}, "segment": {}}
    lines = [f"Whole-head Med-NCA ({args.threads} threads, {args.runs} runs)", "",
             "localisation alone                  seconds  peak RSS MiB (added by the call)  NMI"]
    with tempfile.TemporaryDirectory() as folder:
        cases = write_cases(Path(folder))
        for name, path in cases.items():
            measured = measure_in_fresh_process(Path(__file__), {"what": "locate", "path": str(path),
                                                                 "threads": args.threads}, args.threads,
                                                f"locate {name}", SOURCES)
            result = measured.result
            report["locate"][name] = {**result, "process_peak_mib": measured.process_peak_mib}
            lines.append(f"{name:<34} {result['seconds']:7.2f}  {measured.process_peak_mib:7.0f} "
                         f"({result['added_mib']:.0f})                {result['normalised_mi']:.3f}")
        lines += ["", "segmentation (mednca-segment)       seconds  peak RSS MiB  time vs crop"]
        path = str(cases["template RAS 1 mm"])
        for what in ("crop", "head"):
            measured = measure_in_fresh_process(Path(__file__), {"what": what, "path": path, "runs": args.runs,
                                                                 "threads": args.threads}, args.threads,
                                                f"{what} template", SOURCES)
            report["segment"][what] = {**measured.result, "process_peak_mib": measured.process_peak_mib}
        baseline = report["segment"]["crop"]["seconds"]
        for what, label in (("crop", "hand-cropped left box (baseline)"), ("head", "whole head, both sides")):
            result = report["segment"][what]
            lines.append(f"{label:<34} {result['seconds']:7.1f}  {result['process_peak_mib']:12.0f}  "
                         f"{result['seconds'] / baseline:5.2f}x")
        lines += ["", "volumes (whole head):", report["segment"]["head"]["volumes_csv"].strip()]
    publish("\n".join(lines), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
