"""Does outlier-robust intensity normalisation change OSS-Net's results? (issue 16.3)

    python Testing/Benchmarks/robust_normalization.py [--cases all] [--threads 1]

Segments BraTS cases on their own 1 mm grid twice in the same run: with the plain
normalisation the model was trained with (mean and SD over the whole brain, the baseline,
defined here) and with ``preprocessing.normalize_channel`` (statistics of the brain's
intensities winsorised at its percentiles); then once more with one FLAIR voxel set to 1e4,
the fault that emptied the result. Prints whole-tumour Dice per case and the differences.
The validation case is brats_2013_pat0006_1 (card Dice 0.865); the others were trained on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "Resources" / "Python"), str(ROOT / "OSSNetSegment")]

from EfficientSegmentationCommon.metrics import dice  # noqa: E402
from OSSNetSegmentLib.data import load_case  # noqa: E402
from OSSNetSegmentLib.inference import segment  # noqa: E402
from OSSNetSegmentLib.model_io import load_model  # noqa: E402
from OSSNetSegmentLib.preprocessing import BACKGROUND, CLIP, normalize_channel  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "BraTS_sample"
WEIGHTS = ROOT / "OSSNetSegment" / "Resources" / "Models" / "ossnet_brats_wholetumour.pt"


def plain_normalization(image: np.ndarray) -> np.ndarray:
    """The baseline: z-score over every voxel brighter than the minimum (no outlier handling)."""
    mask = image > image.min()
    values = image[mask].astype(np.float64)
    out = (image - np.float32(values.mean())) / np.float32(max(values.std(), 1e-6))
    np.clip(out, CLIP[0], CLIP[1], out=out)
    out[~mask] = BACKGROUND
    return out


def run(model, images, spacing, normalise) -> np.ndarray:
    volume = [normalise(image) for image in images]
    return segment(model, volume, spacing, normalized=True).labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="brats_2013_pat0006_1", help="a case id, or 'all'")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(WEIGHTS)
    ids = sorted(p.name for p in DATA.iterdir() if p.is_dir()) if args.cases == "all" else [args.cases]
    print(f"{'case':24s} {'plain':>7s} {'robust':>7s} {'diff':>7s} {'plain+outlier':>14s} {'robust+outlier':>15s}")
    for case_id in ids:
        case = load_case(DATA, case_id)
        truth = case.target
        plain = dice(run(model, case.images, case.spacing, plain_normalization) > 0, truth)
        robust = dice(run(model, case.images, case.spacing, normalize_channel) > 0, truth)
        spoiled = [image.copy() for image in case.images]
        brain = np.argwhere(spoiled[0] > spoiled[0].min())
        spoiled[0][tuple(brain[len(brain) // 2])] = 1e4  # one FLAIR voxel inside the brain
        plain_outlier = dice(run(model, spoiled, case.spacing, plain_normalization) > 0, truth)
        robust_outlier = dice(run(model, spoiled, case.spacing, normalize_channel) > 0, truth)
        print(f"{case_id:24s} {plain:7.4f} {robust:7.4f} {robust - plain:+7.4f} {plain_outlier:14.4f} {robust_outlier:15.4f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
