"""Is a poor result the wrong shape, or the right shape one voxel away? Prints a table.

    PYTHONPATH=Resources/Python:MedNCASegment:OSSNetSegment:Testing/Benchmarks \
        python Testing/Benchmarks/label_offset.py [--nca WEIGHTS] [--unet WEIGHTS] [--part train]

Each validation case (``hippocampus_split.json``; with ``--part train`` each training case) is
segmented clean by Med-NCA as in the robustness benchmark (``robustness_benchmark.nca_runner``:
10 runs, seed 0); its foreground is moved by each of the 26 one-voxel shifts (KJI, voxels
falling off the edge dropped) and scored against the expert labels (``metrics.dice``). A case
whose best shift is not zero, and gains much, is segmented in the right shape one voxel (1 mm)
from its labels: the runs agree on it, so no signal drawn from their disagreement flags it
(RESULTS.md, issue 14). With ``--unet`` the 2D UNet baseline (``robustness_benchmark.unet_runner``),
trained apart from Med-NCA, is scored the same way beside it, and the two results against each
other: where both are off the labels by the same voxel and agree with each other, the labels
are the likelier to be off.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from EfficientSegmentationCommon.metrics import dice
from robustness_benchmark import DATA, DEFAULT_NCA, DEFAULT_SPLIT, hippocampus_inputs, nca_runner, unet_runner

SHIFTS = [shift for shift in itertools.product((-1, 0, 1), repeat=3) if any(shift)]


def shifted(mask: np.ndarray, shift: tuple[int, int, int]) -> np.ndarray:
    """``mask`` (K, J, I) moved by ``shift`` voxels along K, J, I; what leaves the grid is dropped."""
    out = np.zeros_like(mask)
    source = tuple(slice(max(0, -d), n - max(0, d)) for d, n in zip(shift, mask.shape, strict=True))
    target = tuple(slice(max(0, d), n - max(0, -d)) for d, n in zip(shift, mask.shape, strict=True))
    out[target] = mask[source]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nca", type=Path, default=DEFAULT_NCA, help="Med-NCA weights (default: the shipped model)")
    parser.add_argument("--unet", type=Path, default=None,
                        help="UNet baseline weights (unet_baseline.py): its results are shifted and scored too")
    parser.add_argument("--part", choices=("validation", "train"), default="validation",
                        help="the split's cases to score (train: the labels both models learnt from; "
                             "default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runners = {"Med-NCA": nca_runner(args.nca, runs=10, seed=0)}
    if args.unet:
        runners["UNet"] = unet_runner(args.unet)
    agreement = " | Med-NCA vs UNet Dice" if args.unet else ""
    print("| case | " + " | ".join(f"{name} Dice | best one-voxel shift (K, J, I) | Dice there | gain"
                                   for name in runners) + agreement + " |")
    print("|---|" + "---:|---|---:|---:|" * len(runners) + ("---:|" if args.unet else ""))
    gains: dict[str, list[float]] = {name: [] for name in runners}
    for item in hippocampus_inputs(DATA / "Task04_Hippocampus", DEFAULT_SPLIT, None, part=args.part):
        truth, cells, results = item.labels > 0, [], []
        for name, run in runners.items():
            predicted = run(item)["labels"] > 0
            results.append(predicted)
            scores = {shift: dice(shifted(predicted, shift), truth) for shift in SHIFTS}
            best = max(scores, key=scores.get)
            unmoved = dice(predicted, truth)
            gain = max(0.0, scores[best] - unmoved)
            gains[name].append(gain)
            cells.append(f"{unmoved:.4f} | {best if gain else '-'} | {max(unmoved, scores[best]):.4f} | {gain:.4f}")
        if args.unet:  # two models trained apart: do they agree with each other more than with the labels?
            cells.append(f"{dice(*results):.4f}")
        print(f"| {item.case_id} | " + " | ".join(cells) + " |", flush=True)
    for name, values in gains.items():
        print(f"\n{name}: {sum(g > 0 for g in values)} of {len(values)} cases score better moved by one voxel")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
