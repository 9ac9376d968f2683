"""What the Med-NCA live preview costs a run; prints a table (not a timed test).

    PYTHONPATH=Resources/Python:MedNCASegment python Testing/Benchmarks/preview_benchmark.py --repeats 3

One real hippocampus MRI (default ``hippocampus_006``, a validation case) in a headless scene,
segmented as the panel does it: ``logic.compute`` in a ``BackgroundJob`` worker thread while
the main thread polls every 100 ms (the panel's ``POLL_INTERVAL_MS``). With the preview, the
worker hands its labels to a ``LivePreview`` (``previewCallback``) and each poll writes the latest
into the preview segmentation node, as the panel's timer does; without, the poll only reads the
job's status. The two alternate (``--repeats`` pairs, without first), so that load from other
processes hits both alike. Reported: median wall seconds per run and the process's CPU
seconds (both threads) per run, and the ratios preview / plain; the aim is at most 1.2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import os
from pathlib import Path

from measurement import medians, paired_runs

REPO = Path(__file__).resolve().parents[2]
# The project's data (EFFSEG_DATA overrides, as for the tests).
DATA = Path(os.environ.get("EFFSEG_DATA", REPO.parent / "shared" / "data")) / "Task04_Hippocampus"
POLL_S = 0.1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="hippocampus_006")
    parser.add_argument("--runs", type=int, default=10, help="stochastic runs (the shipped setting: 10)")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (plain, preview)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from EfficientSegmentationCommon.background import BackgroundJob, JobState
    from EfficientSegmentationCommon.hardware import hardware_description
    from EfficientSegmentationCommon.preview import LivePreview
    from EfficientSegmentationCommon.scene import create_scene, load_volume
    from MedNCASegmentLib.logic import PREVIEW_INTERVAL_S, MedNCASegmentLogic
    from MedNCASegmentLib.settings import MedNCASettings

    torch.set_num_threads(args.threads)
    scene = create_scene()
    volume = load_volume(scene, DATA / "imagesTr" / f"{args.case}.nii.gz")
    logic = MedNCASegmentLogic(scene)

    def run(with_preview: bool) -> dict:
        job = logic.prepare(volume, MedNCASettings(runs=args.runs, preview=with_preview))
        logic.load(job.entry, "cpu")
        preview = LivePreview(scene, volume, job.full_geometry, job.entry.segments, "Med-NCA") if with_preview else None
        keywords = {"previewCallback": preview.put} if preview else {}
        background = BackgroundJob()
        wall, cpu = time.perf_counter(), time.process_time()
        background.start(lambda progress, cancel: logic.compute(job, progress, cancel, **keywords))
        while background.state.active:
            time.sleep(POLL_S)
            background.poll()
            if preview is not None:
                preview.show()
        status = background.wait()
        row = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
               "frames": preview.shown if preview else 0}
        if status.state is not JobState.FINISHED:
            raise RuntimeError(f"the run ended {status.state.value}: {status.error}")
        if preview is not None:
            preview.show(force=True)  # the last frame (the result)
            preview.remove()
        return row

    rows = paired_runs(run, args.repeats,
                       lambda r: f"{r['wall']:.2f} s wall, {r['cpu']:.2f} s CPU, {r['frames']} preview frames")
    wall, cpu = medians(rows, "wall"), medians(rows, "cpu")
    frames = statistics.median(r["frames"] for r in rows[True])
    print(f"## Live preview cost: {args.case}, runs={args.runs}, {args.repeats} pairs, preview at most every "
          f"{PREVIEW_INTERVAL_S} s, poll every {POLL_S} s\n")
    print("| run | wall s (median) | CPU s (median, both threads) | preview frames shown |\n|---|---:|---:|---:|")
    print(f"| plain | {wall[False]:.2f} | {cpu[False]:.2f} | - |")
    print(f"| with preview | {wall[True]:.2f} | {cpu[True]:.2f} | {frames:.0f} |")
    print(f"\nRatio preview / plain: wall {wall[True] / wall[False]:.3f}, CPU {cpu[True] / cpu[False]:.3f}.")
    print(f"Hardware: {hardware_description()}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
