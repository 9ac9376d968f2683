"""The UNet baseline for the Med-NCA benchmark: MONAI's 2D UNet, trained like the automaton.

    python Testing/Benchmarks/unet_baseline.py --cpu-minutes 150 --threads 2 \
        --work-dir runs/unet_baseline --output runs/unet_baseline/unet_baseline.pt

A standard MONAI configuration (channels 16-32-64-128-256, strides 2, two residual units),
fed exactly what Med-NCA gets: the same split, 2.5D input (slice and neighbours), sampler,
augmentation and loss, and the same training budget. The budget is *process CPU time*
(``time.process_time()``, all threads together, summed over resumed sessions), not wall
time, so it stays fair when other processes share the cores; give it the CPU minutes the
Med-NCA training process used (its weights' metadata ``cpu_minutes``). The learning rate
follows a cosine over the fraction of that budget spent, so the schedule ends when the
budget does. A checkpoint is written to the work directory every few (wall) minutes and the
run resumes from it when started again with the same arguments.

Writes the state_dict to ``--output`` and a small JSON beside it (``<output>.json``):
iterations, CPU minutes, wall minutes, threads, seed, command.

At inference (:func:`segment_unet`) the UNet sees whole volumes the way Med-NCA does:
``normalize_intensity``, slice-wise along the first (K) axis with the neighbouring slices as
channels (``slice_stack``), padded to a multiple of 16 (four stride-2 levels), two sigmoid
outputs decoded by ``inference.decode_labels``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from EfficientSegmentationCommon.training import read_split
from MedNCASegmentLib.augmentation import augment
from MedNCASegmentLib.data import load_case
from MedNCASegmentLib.inference import decode_labels
from MedNCASegmentLib.preprocessing import normalize_intensity, pad_to_multiple, slice_stack
from MedNCASegmentLib.training import DEFAULT_DATA, DEFAULT_SPLIT, Sampler, segmentation_loss

import monai_unet
from budget_training import BudgetTraining, add_run_arguments, add_session_arguments, start_session

INPUT_CHANNELS = 3
CLASSES = 2
PAD_MULTIPLE = 16  # 2 ** number of stride-2 levels
UNET_CONFIG = {"spatial_dims": 2, "in_channels": INPUT_CHANNELS, "out_channels": CLASSES,
               "channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2}


def load_unet(path: Path) -> torch.nn.Module:
    """This baseline's UNet with the state_dict saved at ``path``, ready for inference."""
    return monai_unet.load_unet(UNET_CONFIG, path)


@torch.no_grad()
def segment_unet(model: torch.nn.Module, image: np.ndarray, slice_batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Hard labels (D, H, W) and per-class probabilities (K, D, H, W) of a raw (D, H, W) volume.

    Same preprocessing and decoding as Med-NCA's :func:`inference.segment`: normalised
    intensities, 2.5D slice stacks along the first axis, zero padding (here to a multiple of 16),
    one sigmoid per class, foreground where the classes together exceed 0.5.
    """
    model.eval()
    padded, crop = pad_to_multiple(normalize_intensity(image), PAD_MULTIPLE, axes=(1, 2))
    stack = torch.from_numpy(np.ascontiguousarray(slice_stack(padded, context=(INPUT_CHANNELS - 1) // 2)))
    outputs = [torch.sigmoid(model(chunk)) for chunk in torch.split(stack, slice_batch)]
    probabilities = torch.cat(outputs).permute(1, 0, 2, 3).numpy()  # (K, D, H', W')
    probabilities = np.ascontiguousarray(probabilities[(slice(None), *crop)])
    return decode_labels(probabilities), probabilities


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, DEFAULT_DATA, DEFAULT_SPLIT)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3)
    add_session_arguments(parser, threads=2)
    args = parser.parse_args(argv)
    rng, generator = start_session(args.threads, args.seed)
    model = monai_unet.build_unet(UNET_CONFIG)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    training = BudgetTraining(args, model, optimizer, rng, generator)

    cases = [load_case(args.data, i) for i in read_split(args.split)["train"]]
    sampler = Sampler(cases, 2, (64, 48), (INPUT_CHANNELS - 1) // 2, rng)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{len(cases)} training cases; UNet {parameters} parameters; budget {args.cpu_minutes} CPU min, "
          f"{args.threads} threads", flush=True)

    def batch_loss() -> torch.Tensor:
        images, labels = augment(*sampler.batch(args.batch), generator)
        return segmentation_loss(model(images), labels)

    training.train(batch_loss, smoothing=0.02, log_every=200)
    training.finish({"model": "MONAI UNet", "config": UNET_CONFIG, "parameters": parameters,
                     "iterations": training.iteration, "batch": args.batch, "lr": args.lr})
    return 0


if __name__ == "__main__":
    sys.exit(main())
