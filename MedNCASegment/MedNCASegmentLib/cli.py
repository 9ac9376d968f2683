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

from EfficientSegmentationCommon.batch import FORMATS, BatchOutcome, ProgressBar, output_path, run_batch, write_result
from EfficientSegmentationCommon.errors import InputVolumeError
from EfficientSegmentationCommon.scene import create_scene, load_volume

from .logic import MedNCASegmentLogic


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mednca-segment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="volumes to segment (.nii.gz, .nii, .nrrd, ...)")
    parser.add_argument("-o", "--output-dir", type=Path, required=True)
    parser.add_argument("--model", default=None, help="registry id or model file (default: the first Med-NCA model)")
    parser.add_argument("--runs", type=int, default=10, help="stochastic runs: more give a steadier mean and quality score")
    parser.add_argument("--global-steps", type=int, default=None, help="steps of the downscaled stage (default: trained)")
    parser.add_argument("--refinement-steps", type=int, default=None, help="full-resolution steps (default: trained)")
    parser.add_argument("--downscale", type=int, default=None, help="downscale factor of the global stage")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all-components", action="store_true",
                        help="keep every segmented island, not only the largest structure (input with both hippocampi)")
    parser.add_argument("--format", choices=FORMATS, default="seg.nrrd")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    scene = create_scene()
    logic = MedNCASegmentLogic(scene)
    try:
        entry = logic.model_entry(args.model)
    except InputVolumeError as error:
        print(f"mednca-segment: {error}", file=sys.stderr)
        return 2
    print(f"model: {entry.id} ({entry.title}); {args.runs} runs; output: {args.output_dir}", flush=True)

    def process(path: str) -> BatchOutcome:
        volume = load_volume(scene, path)
        try:
            result = logic.segment(volume, model=args.model, globalSteps=args.global_steps,
                                   refinementSteps=args.refinement_steps, downscale=args.downscale,
                                   runs=args.runs, device=args.device, seed=args.seed,
                                   keepLargestComponent=not args.all_components,
                                   progressCallback=ProgressBar(volume.GetName()))
            written = write_result(scene, result.segmentation, volume, entry.segments,
                                   output_path(args.output_dir, volume.GetName(), args.format))
            quality = ", ".join(f"{name} {score:.3f}" for name, score in result.quality.items())
            warning = " WARNING: likely failure" if result.likely_failure else ""
            return BatchOutcome(volume.GetName(), True,
                                f"{written} ({result.seconds:.1f} s; quality score NQM: {quality}){warning}",
                                result.seconds)
        finally:
            scene.Clear(0)  # keep memory flat over long batches

    return run_batch(args.inputs, process)


if __name__ == "__main__":
    sys.exit(main())
