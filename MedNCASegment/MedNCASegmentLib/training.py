"""Train Med-NCA (2D) or M3D-NCA (3D) on the MSD hippocampus data, reproducibly and resumably.

    python -m MedNCASegmentLib.training --dims 2 --work-dir runs/mednca2d \
        --output MedNCASegment/Resources/Models/mednca2d_hippocampus.pt

The schedule is defined in iterations, not minutes, so a run gives the same weights whatever
the machine (same seed, same thread count). A checkpoint is written every few minutes to the
work directory and the run resumes from it when started again with the same arguments.

Recipe (measured choices; the model card records the exact values):
- images stay on their native 1 mm grid (the reference resizes to 64x64 and ignores spacing);
- the 2D automaton sees each slice with its two neighbours as fixed input channels (2.5D);
- stage 2 trains on a random patch that lies on the structure most of the time;
- augmentation for shifts, flips, rotation, scale, contrast, bias field and noise; with
  ``--artefact-copies N``, N copies of each training volume with a random MRI artefact (motion,
  thick slices, blur, spike, ghosting; torchio), drawn instead of the clean volume for a share
  ``--artefact-share`` of the samples (default half);
- ``--init WEIGHTS`` starts from trained weights (fine-tuning) instead of a random automaton;
- Adam with warm-up and cosine decay, gradient clipping (the automaton's recurrence makes
  gradients spiky); loss BCE + soft Dice per class.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from EfficientSegmentationCommon.hardware import hardware_description
from EfficientSegmentationCommon.metrics import dice
from EfficientSegmentationCommon.training import warmup_cosine

from .augmentation import artefact_copies, augment
from .data import Case, load_case, read_split
from .inference import segment
from .model_io import load_model, save_model
from .nca import MedNCA, default_config
from .preprocessing import normalize_intensity, slice_stack

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "Task04_Hippocampus"
DEFAULT_SPLIT = REPO / "MedNCASegment" / "Resources" / "Models" / "hippocampus_split.json"


class Sampler:
    """Draws training batches placed at random on a fixed canvas (translation augmentation).

    2D samples are slices with their neighbours; most contain hippocampus (the reference skips
    empty batches), some are drawn from anywhere so the model also learns empty slices.
    """

    def __init__(self, cases: list[Case], dims: int, canvas: tuple[int, ...], context: int,
                 rng: np.random.Generator, artefact_copies_per_case: int = 0, seed: int = 0,
                 artefact_share: float = 0.5) -> None:
        self.dims, self.canvas, self.rng = dims, canvas, rng
        self.artefact_share = artefact_share
        # variants[case]: the clean volume, then its copies with artefacts (all normalised).
        self.variants = [[normalize_intensity(image) for image in
                          (c.image, *artefact_copies(c.image, artefact_copies_per_case, seed + index))]
                         for index, c in enumerate(cases)]
        self.labels = [c.labels for c in cases]
        if dims == 2:
            self.stacks = [[slice_stack(image, context) for image in variants] for variants in self.variants]
            self.all_slices = [(i, k) for i, labels in enumerate(self.labels) for k in range(labels.shape[0])]
            self.foreground_slices = [(i, k) for i, k in self.all_slices if self.labels[i][k].any()]

    def _place(self, image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spatial = labels.shape
        out_image = np.zeros((image.shape[0], *self.canvas), np.float32)
        out_labels = np.zeros(self.canvas, np.int64)
        source, target = [], []
        for size, room in zip(spatial, self.canvas, strict=True):
            if size <= room:
                offset = int(self.rng.integers(0, room - size + 1))
                source.append(slice(0, size))
                target.append(slice(offset, offset + size))
            else:  # larger than the canvas: take a random window
                offset = int(self.rng.integers(0, size - room + 1))
                source.append(slice(offset, offset + room))
                target.append(slice(0, room))
        out_image[(slice(None), *target)] = image[(slice(None), *source)]
        out_labels[tuple(target)] = labels[tuple(source)]
        return out_image, out_labels

    def _variant(self, case: int) -> int:
        """0 (the clean volume), or, with probability ``artefact_share`` when there are copies with
        artefacts, one of them."""
        copies = len(self.variants[case]) - 1
        if not copies or self.rng.random() < 1.0 - self.artefact_share:
            return 0
        return 1 + int(self.rng.integers(copies))

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for _ in range(size):
            if self.dims == 2:
                pool = self.foreground_slices if self.rng.random() < 0.9 else self.all_slices
                case, k = pool[int(self.rng.integers(len(pool)))]
                image, label = self._place(self.stacks[case][self._variant(case)][k], self.labels[case][k])
            else:
                case = int(self.rng.integers(len(self.variants)))
                image, label = self._place(self.variants[case][self._variant(case)][None], self.labels[case])
            images.append(image)
            labels.append(label)
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def patch_cropper(labels: torch.Tensor, patch: int, rng: np.random.Generator, on_structure: float = 0.8):
    """A crop function for the refinement stage: per sample, a patch centred on a random foreground
    voxel (with probability ``on_structure``) or anywhere; returns it and the cropped labels' slot."""
    spatial = labels.shape[1:]
    corners = []
    for b in range(labels.shape[0]):
        foreground = torch.nonzero(labels[b])
        if len(foreground) and rng.random() < on_structure:
            centre = foreground[int(rng.integers(len(foreground)))].tolist()
        else:
            centre = [int(rng.integers(n)) for n in spatial]
        corners.append([min(max(c - patch // 2, 0), n - patch) for c, n in zip(centre, spatial, strict=True)])

    def window(b: int) -> tuple[slice, ...]:
        return tuple(slice(c, c + patch) for c in corners[b])

    def crop(state: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = torch.stack([state[(b, slice(None), *window(b))] for b in range(state.shape[0])])
        images = torch.stack([image[(b, slice(None), *window(b))] for b in range(image.shape[0])])
        return states, images

    cropped_labels = torch.stack([labels[(b, *window(b))] for b in range(labels.shape[0])])
    return crop, cropped_labels


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE + (1 - soft Dice), per class with its own sigmoid output (labels 1..C for C classes)."""
    classes = logits.shape[1]
    target = torch.stack([(labels == k + 1) for k in range(classes)], dim=1).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probabilities = torch.sigmoid(logits)
    dims = (0, *range(2, logits.dim()))
    intersection = (probabilities * target).sum(dims)
    soft_dice = (2 * intersection + 1) / (probabilities.sum(dims) + target.sum(dims) + 1)
    return bce + (1 - soft_dice).mean()


def evaluate(model: MedNCA, cases: list[Case], runs: int, seed: int) -> dict[str, float]:
    """Mean dense whole-volume hard Dice over cases: foreground and per class."""
    scores: dict[str, list[float]] = {"foreground": [], "anterior": [], "posterior": []}
    for case in cases:
        labels = segment(model, case.image, runs=runs, seed=seed).labels()
        scores["foreground"].append(dice(labels > 0, case.labels > 0))
        scores["anterior"].append(dice(labels == 1, case.labels == 1))
        scores["posterior"].append(dice(labels == 2, case.labels == 2))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    parser.add_argument("--work-dir", type=Path, required=True, help="checkpoints and log; resumed from if present")
    parser.add_argument("--output", type=Path, required=True, help="where the trained weights are written")
    parser.add_argument("--iterations", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=24, help="side of the refinement-stage training patch")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-cases", type=int, default=12, help="validation cases for the periodic check")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from these trained weights (fine-tuning; their configuration is kept)")
    parser.add_argument("--artefact-copies", type=int, default=0,
                        help="copies of each training volume with a random MRI artefact (needs torchio)")
    parser.add_argument("--artefact-share", type=float, default=0.5,
                        help="fraction of training samples drawn from a copy with an artefact")
    parser.add_argument("--channels", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--global-steps", type=int, default=None)
    parser.add_argument("--refinement-steps", type=int, default=None)
    args = parser.parse_args(argv)
    if not 0.0 <= args.artefact_share <= 1.0:
        parser.error(f"--artefact-share must be a fraction from 0 to 1, not {args.artefact_share}")
    if args.artefact_copies < 0:
        parser.error(f"--artefact-copies must be 0 or more, not {args.artefact_copies}")
    return args


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    config = default_config(args.dims)
    for name in ("channels", "hidden", "global_steps", "refinement_steps"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    if args.init is not None:
        model, _ = load_model(args.init)
        config = model.config
    else:
        model = MedNCA(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    split = read_split(args.split)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    log = (args.work_dir / "log.jsonl").open("a")

    start_iteration, elapsed, history = 0, 0.0, []
    checkpoint_path = args.work_dir / "checkpoint.pt"
    if checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_iteration, elapsed, history = checkpoint["iteration"], checkpoint["elapsed"], checkpoint["history"]
        rng.bit_generator.state = checkpoint["numpy_rng"]
        generator.set_state(checkpoint["torch_rng"])
        torch.set_rng_state(checkpoint["global_rng"])
        print(f"resumed at iteration {start_iteration} ({elapsed / 60:.1f} min trained)", flush=True)

    train_cases = [load_case(args.data, i) for i in split["train"]]
    validation_cases = [load_case(args.data, i) for i in split["validation"]]
    canvas = (64, 48) if args.dims == 2 else (48, 64, 48)
    sampler = Sampler(train_cases, args.dims, canvas, (config.input_channels - 1) // 2, rng,
                      args.artefact_copies, args.seed, args.artefact_share)
    print(f"{len(train_cases)} training and {len(validation_cases)} validation cases; "
          f"{model.parameter_count} parameters; config {config.to_dict()}", flush=True)

    def save_checkpoint(iteration: int) -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
                 "elapsed": elapsed, "history": history, "numpy_rng": rng.bit_generator.state,
                 "torch_rng": generator.get_state(), "global_rng": torch.get_rng_state(), "args": vars(args)}
        torch.save(state, checkpoint_path.with_suffix(".tmp"))
        checkpoint_path.with_suffix(".tmp").replace(checkpoint_path)

    last_save = time.monotonic()
    bar = tqdm(range(start_iteration, args.iterations), initial=start_iteration, total=args.iterations,
               mininterval=20, file=sys.stdout, desc="training")
    started = time.monotonic() - elapsed
    running = None
    for iteration in bar:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(iteration, args.iterations, args.lr, args.warmup)
        images, labels = sampler.batch(args.batch)
        images, labels = augment(images, labels, generator)
        crop, patch_labels = patch_cropper(labels, args.patch, rng)
        logits = model(images, crop=crop, generator=generator)
        loss = segmentation_loss(logits, patch_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}", refresh=False)
        elapsed = time.monotonic() - started
        done = iteration + 1
        if done % args.eval_every == 0 or done == args.iterations:
            scores = evaluate(model, validation_cases[: args.eval_cases], runs=1, seed=args.seed)
            record = {"iteration": done, "minutes": round(elapsed / 60, 2), "loss": round(running, 4),
                      **{f"dice_{k}": round(v, 4) for k, v in scores.items()}}
            history.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(json.dumps(record), flush=True)
            save_model(args.work_dir / f"weights_{done:06d}.pt", model, {"iteration": done})
        if time.monotonic() - last_save > args.checkpoint_minutes * 60 or done == args.iterations:
            save_checkpoint(done)
            last_save = time.monotonic()

    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_model(args.output, model, {"iterations": args.iterations, "seed": args.seed,
                                    "train_minutes": round(elapsed / 60, 1), "threads": args.threads,
                                    "command": " ".join(["python -m MedNCASegmentLib.training", *sys.argv[1:]]), "history": history,
                                    "hardware": hardware_description(), "cpu_minutes": round(time.process_time() / 60, 1)})
    print(f"wrote {args.output} after {elapsed / 60:.1f} minutes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
