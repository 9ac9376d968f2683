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
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from EfficientSegmentationCommon.hardware import hardware_description
from EfficientSegmentationCommon.training import cosine_decay, read_split
from MedNCASegmentLib.augmentation import augment
from MedNCASegmentLib.data import load_case
from MedNCASegmentLib.inference import decode_labels
from MedNCASegmentLib.preprocessing import normalize_intensity, pad_to_multiple, slice_stack
from MedNCASegmentLib.training import DEFAULT_DATA, DEFAULT_SPLIT, Sampler, segmentation_loss

INPUT_CHANNELS = 3
CLASSES = 2
PAD_MULTIPLE = 16  # 2 ** number of stride-2 levels
UNET_CONFIG = {"spatial_dims": 2, "in_channels": INPUT_CHANNELS, "out_channels": CLASSES,
               "channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2}


def build_unet() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(**UNET_CONFIG)


def load_unet(path: Path) -> torch.nn.Module:
    model = build_unet()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


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
    parser.add_argument("--cpu-minutes", type=float, required=True,
                        help="training budget in process CPU minutes (all threads, summed over resumes)")
    parser.add_argument("--output", type=Path, required=True, help="state_dict; <output>.json gets the run facts")
    parser.add_argument("--work-dir", type=Path, required=True, help="checkpoint and log; resumed from if present")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0, help="wall minutes between checkpoints")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = build_unet()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    budget = args.cpu_minutes * 60

    # CPU and wall seconds spent by earlier sessions of this run (resume); this session's are added.
    cpu_before, wall_before, iteration, running = 0.0, 0.0, 0, None
    args.work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = args.work_dir / "checkpoint.pt"
    if checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        iteration, running = checkpoint["iteration"], checkpoint["running"]
        cpu_before, wall_before = checkpoint["cpu_seconds"], checkpoint["wall_seconds"]
        rng.bit_generator.state = checkpoint["numpy_rng"]
        generator.set_state(checkpoint["torch_rng"])
        torch.set_rng_state(checkpoint["global_rng"])
        print(f"resumed at iteration {iteration} ({cpu_before / 60:.1f} CPU min, {wall_before / 60:.1f} wall min)",
              flush=True)
    session_wall_start = time.monotonic()

    def cpu_seconds() -> float:  # the whole process counts, start-up and data loading included (as for Med-NCA)
        return cpu_before + time.process_time()

    def wall_seconds() -> float:
        return wall_before + time.monotonic() - session_wall_start

    cases = [load_case(args.data, i) for i in read_split(args.split)["train"]]
    sampler = Sampler(cases, 2, (64, 48), (INPUT_CHANNELS - 1) // 2, rng)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{len(cases)} training cases; UNet {parameters} parameters; budget {args.cpu_minutes} CPU min, "
          f"{args.threads} threads", flush=True)
    log = (args.work_dir / "log.jsonl").open("a")

    def save_checkpoint() -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
                 "running": running, "cpu_seconds": cpu_seconds(), "wall_seconds": wall_seconds(),
                 "numpy_rng": rng.bit_generator.state, "torch_rng": generator.get_state(),
                 "global_rng": torch.get_rng_state(), "args": {k: str(v) for k, v in vars(args).items()}}
        torch.save(state, checkpoint_path.with_suffix(".tmp"))
        checkpoint_path.with_suffix(".tmp").replace(checkpoint_path)

    last_save = time.monotonic()
    while (spent := cpu_seconds()) < budget:
        for group in optimizer.param_groups:
            group["lr"] = cosine_decay(spent / budget, args.lr)
        images, labels = augment(*sampler.batch(args.batch), generator)
        model.train()
        loss = segmentation_loss(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        iteration += 1
        if iteration % 200 == 0:
            record = {"iteration": iteration, "cpu_minutes": round(cpu_seconds() / 60, 2),
                      "wall_minutes": round(wall_seconds() / 60, 2), "loss": round(running, 4)}
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(json.dumps(record), flush=True)
        if time.monotonic() - last_save > args.checkpoint_minutes * 60:
            save_checkpoint()
            last_save = time.monotonic()
    save_checkpoint()

    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.output)
    facts = {"model": "MONAI UNet", "config": UNET_CONFIG, "parameters": parameters, "iterations": iteration,
             "batch": args.batch, "lr": args.lr, "seed": args.seed, "threads": args.threads,
             "cpu_minutes_budget": args.cpu_minutes, "cpu_minutes": round(cpu_seconds() / 60, 2),
             "wall_minutes": round(wall_seconds() / 60, 2), "final_loss": None if running is None else round(running, 4),
             "command": " ".join(sys.argv), "hardware": hardware_description()}
    args.output.with_suffix(".json").write_text(json.dumps(facts, indent=1) + "\n")
    print(f"wrote {args.output}: {iteration} iterations in {facts['cpu_minutes']} CPU minutes "
          f"({facts['wall_minutes']} wall minutes)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
