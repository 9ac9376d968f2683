"""The 3D UNet baseline for the OSS-Net benchmark: MONAI's 3D UNet, trained on the BraTS sample.

    OMP_NUM_THREADS=1 python Testing/Benchmarks/unet3d_baseline.py --cpu-minutes 60 --threads 1 --seed 2026 \
        --work-dir runs/unet3d_baseline --output runs/unet3d_baseline/unet3d_baseline.pt

A standard MONAI configuration (3D, channels 16-32-64-128-256, strides 2, two residual units,
instance norm), trained on what OSS-Net is trained on: the same split (brats_split.json, four
training cases), the same inputs (FLAIR and contrast T1) normalised exactly as OSS-Net
normalises them (``OSSNetSegmentLib.preprocessing.normalize_images``), the same target (whole
tumour, labels > 0) and the same intensity augmentation (``Trainer.augment_intensity`` with the
magnitudes of ``TrainingSettings``). As is usual for a 3D UNet it learns on random patches
(``--patch`` voxels a side, ``--batch`` a step; half centred on a tumour voxel, half anywhere),
flipped along random axes, with Dice + BCE loss (MONAI ``DiceCELoss``) and AdamW.

The budget is *process CPU time* (``time.process_time()``, all threads together, start-up and
data loading included, summed over resumed sessions), not wall time, so it stays fair when
other processes share the cores. The learning rate follows a cosine over the fraction of that
budget spent, so the schedule ends when the budget does. A checkpoint is written to the work
directory every few (wall) minutes and the run resumes from it when started again with the
same arguments.

Writes the state_dict to ``--output`` and a small JSON beside it (``<output>.json``):
iterations, CPU minutes, wall minutes, threads, seed, command.

At inference (:func:`segment_unet3d`) the UNet sees the whole volume at once, as a standard
3D UNet does: normalised, padded with background to a multiple of 16 (four stride-2 levels),
one forward pass, sigmoid > 0.5. Only if that cannot be allocated does it fall back to MONAI's
``sliding_window_inference`` (128^3 windows), and it says which it used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from EfficientSegmentationCommon.training import read_split
from MedNCASegmentLib.preprocessing import pad_to_multiple
from OSSNetSegmentLib.data import Case, load_case
from OSSNetSegmentLib.preprocessing import BACKGROUND, normalize_images
from OSSNetSegmentLib.training import DEFAULT_DATA, DEFAULT_SPLIT, Trainer, TrainingSettings

import monai_unet
from budget_training import BudgetTraining, add_run_arguments, add_session_arguments, start_session

INPUTS = ("FLAIR", "T1c")  # OSS-Net's inputs, in its order
PAD_MULTIPLE = 16  # 2 ** number of stride-2 levels
SLIDING_WINDOW_ROI = (128, 128, 128)
UNET_CONFIG = {"spatial_dims": 3, "in_channels": len(INPUTS), "out_channels": 1,
               "channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2}


def load_unet(path: Path) -> torch.nn.Module:
    """This baseline's UNet with the state_dict saved at ``path``, ready for inference."""
    return monai_unet.load_unet(UNET_CONFIG, path)


@torch.no_grad()
def segment_unet3d(model: torch.nn.Module, images: Sequence[np.ndarray], mode: str = "auto") -> tuple[np.ndarray, str]:
    """Whole-tumour labels (uint8, KJI) of raw input images (KJI, ``INPUTS`` order) and the mode used.

    ``mode``: "whole" (one forward pass over the whole padded volume), "sliding" (MONAI
    sliding-window inference, 128^3 windows, 25% overlap) or "auto" (whole, and sliding only
    if the whole volume cannot be allocated).
    """
    model.eval()
    # pad_to_multiple pads with zeros: shift so that the padding reads as background.
    shifted, crop = pad_to_multiple(normalize_images(images) - BACKGROUND, PAD_MULTIPLE, axes=(1, 2, 3))
    volume = torch.from_numpy(shifted)[None]
    volume += BACKGROUND
    logits = None
    if mode in ("whole", "auto"):
        try:
            logits = model(volume)
        except (RuntimeError, MemoryError) as error:  # CPU allocation failures
            if mode == "whole" or "alloc" not in str(error).lower():
                raise
            print(f"whole-volume inference failed ({error}); falling back to sliding windows", file=sys.stderr)
    if logits is None:
        from monai.inferers import sliding_window_inference

        mode = "sliding"
        logits = sliding_window_inference(volume, SLIDING_WINDOW_ROI, 1, model, overlap=0.25)
    else:
        mode = "whole"
    labels = (logits[0, 0] > 0).numpy()  # sigmoid > 0.5
    return np.ascontiguousarray(labels[crop[1:]]).astype(np.uint8), mode


class PatchSampler:
    """Random training patches of the prepared cases: (B, C, p, p, p) images and (B, 1, p, p, p) targets."""

    def __init__(self, cases: list[Case], patch: int, tumour_fraction: float, rng: np.random.Generator) -> None:
        self.images = [normalize_images(case.images) for case in cases]
        self.targets = [case.target for case in cases]
        self.foreground = [np.flatnonzero(target) for target in self.targets]
        self.patch, self.tumour_fraction, self.rng = patch, tumour_fraction, rng
        for image in self.images:
            if min(image.shape[1:]) < patch:
                raise ValueError(f"patch {patch} is larger than a volume ({image.shape[1:]})")

    def one(self) -> tuple[np.ndarray, np.ndarray]:
        rng, p = self.rng, self.patch
        index = int(rng.integers(len(self.images)))
        image, target, foreground = self.images[index], self.targets[index], self.foreground[index]
        shape = target.shape
        if len(foreground) and rng.random() < self.tumour_fraction:
            centre = np.unravel_index(foreground[int(rng.integers(len(foreground)))], shape)
            start = [int(np.clip(c - p // 2, 0, n - p)) for c, n in zip(centre, shape, strict=True)]
        else:
            start = [int(rng.integers(n - p + 1)) for n in shape]
        box = tuple(slice(s, s + p) for s in start)
        return image[(slice(None), *box)], target[box]

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.one() for _ in range(size)]
        images = torch.from_numpy(np.stack([image for image, _ in pairs]))
        targets = torch.from_numpy(np.stack([target for _, target in pairs])[:, None].astype(np.float32))
        return images, targets


def augment(images: torch.Tensor, targets: torch.Tensor, settings: TrainingSettings, rng: np.random.Generator,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: flips of random axes, and OSS-Net's intensity augmentation (gain and offset per
    channel, Gaussian noise, inside the head only) with OSS-Net's magnitudes."""
    s = settings
    noise_source = SimpleNamespace(generator=generator)  # all Trainer.augment_intensity uses of its trainer
    out_images, out_targets = [], []
    for image, target in zip(images, targets, strict=True):
        axes = [1 + axis for axis in range(3) if rng.random() < 0.5]
        if axes:
            image, target = image.flip(axes), target.flip(axes)
        channels = image.shape[0]
        gain = torch.from_numpy(rng.uniform(1 - s.brightness, 1 + s.brightness, size=channels)).float()
        offset = torch.from_numpy(rng.uniform(-s.offset, s.offset, size=channels)).float()
        noise = float(rng.uniform(0, s.noise_std)) if rng.random() < s.noise_probability else 0.0
        out_images.append(Trainer.augment_intensity(noise_source, image[None], gain, offset, noise)[0])
        out_targets.append(target)
    return torch.stack(out_images).contiguous(), torch.stack(out_targets).contiguous()


def main(argv: list[str] | None = None) -> int:
    from monai.losses import DiceCELoss

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, DEFAULT_DATA, DEFAULT_SPLIT)
    parser.add_argument("--patch", type=int, default=96, help="patch side (voxels)")
    parser.add_argument("--batch", type=int, default=2, help="patches per step")
    parser.add_argument("--tumour-fraction", type=float, default=0.5, help="share of patches centred on tumour")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=TrainingSettings.weight_decay)
    add_session_arguments(parser, threads=1)
    parser.add_argument("--log-every", type=int, default=50, help="iterations between log lines")
    args = parser.parse_args(argv)
    rng, generator = start_session(args.threads, args.seed)
    model = monai_unet.build_unet(UNET_CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    loss_function = DiceCELoss(sigmoid=True)
    settings = TrainingSettings()  # OSS-Net's augmentation magnitudes
    training = BudgetTraining(args, model, optimizer, rng, generator)

    split = read_split(args.split)
    sampler = PatchSampler([load_case(args.data, i, INPUTS) for i in split["train"]], args.patch,
                           args.tumour_fraction, rng)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{len(sampler.images)} training cases; 3D UNet {parameters} parameters; patches {args.patch}^3 x "
          f"{args.batch}; budget {args.cpu_minutes} CPU min, {args.threads} threads", flush=True)

    def batch_loss() -> torch.Tensor:
        images, targets = augment(*sampler.batch(args.batch), settings, rng, generator)
        return loss_function(model(images), targets)

    training.train(batch_loss, smoothing=0.05, log_every=args.log_every, log_lr=True)
    training.finish({"model": "MONAI UNet (3D)", "config": UNET_CONFIG, "parameters": parameters,
                     "iterations": training.iteration, "patch": args.patch, "batch": args.batch,
                     "tumour_fraction": args.tumour_fraction, "lr": args.lr, "weight_decay": args.weight_decay},
                    extra={"split": split})
    return 0


if __name__ == "__main__":
    sys.exit(main())
