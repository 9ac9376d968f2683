"""Train OSS-Net (variant C, CPU-sized) on the BraTS sample for whole tumour, reproducibly and resumably.

    python -m OSSNetSegmentLib.training --work-dir runs/ossnet \
        --output OSSNetSegment/Resources/Models/ossnet_brats_wholetumour.pt

The schedule is defined in iterations, not minutes, so a run gives the same weights whatever
the machine (same seed, same thread count). A checkpoint is written every few minutes to the
work directory and the run resumes from it when started again with the same arguments.

One iteration is one training volume and ``--points`` query points in it:
- augmentation: flips of each axis, a scale of 0.85..1.15, a crop box (the encoder then sees
  background outside it, as for a cropped input), brightness +-15% and an offset per channel,
  Gaussian noise; all applied as a change of coordinates, so nothing of the volume is copied;
- points: half in a band of +-3 voxels around the tumour's border, the rest uniform in the
  head, some anywhere in the (cropped) box; half of the iterations jitter the points inside
  their voxel, so the decoder learns to read interpolated patches (off-grid outputs);
- loss: BCE of the points + 0.1 x BCE of the coarse head against the max-pooled labels;
- AdamW with warm-up and cosine decay, gradient clipping.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from EfficientSegmentationCommon.hardware import hardware_description
from EfficientSegmentationCommon.training import warmup_cosine

from .data import Case, load_case, read_split
from .inference import segment
from .model_io import save_model
from .network import OSSNet, OSSNetConfig, default_config
from .preprocessing import BACKGROUND, Transform, VolumeSampler, centred_positions, encoder_grid_shape, normalize_images, sample

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "BraTS_sample"
DEFAULT_SPLIT = REPO / "OSSNetSegment" / "Resources" / "Models" / "brats_split.json"


@dataclass
class TrainingSettings:
    points: int = 8192
    boundary_fraction: float = 0.5  # points in the band around the border
    head_fraction: float = 0.35  # points uniform in the head; the rest anywhere in the box
    band: int = 3  # half-width (voxels) of the border band
    crop_probability: float = 0.75
    crop_range: tuple[float, float] = (48.0, 200.0)  # crop box side, mm (small: a user's ROI)
    scale_probability: float = 0.5
    scale_range: tuple[float, float] = (0.85, 1.15)
    jitter_probability: float = 0.5
    brightness: float = 0.15
    offset: float = 0.1
    noise_probability: float = 0.5
    noise_std: float = 0.1
    coarse_weight: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    iterations: int = 3000


class TrainingVolume:
    """A training case prepared once: its sampler, target and the point pools."""

    def __init__(self, case: Case, config: OSSNetConfig, band: int) -> None:
        self.case_id = case.case_id
        self.spacing = tuple(reversed(case.spacing))  # KJI
        normalized = normalize_images(case.images)
        self.sampler = VolumeSampler(normalized, self.spacing, config.encoder_spacing, config.patch_spacing)
        target = case.target
        self.shape = target.shape
        self.target = torch.from_numpy(target)
        self.target_volume = torch.from_numpy(target.astype(np.float32))[None]  # for the coarse head's target
        self.extent = torch.tensor(self.sampler.extent, dtype=torch.float64)
        if target.any():
            structure = ndimage.generate_binary_structure(3, 1)
            band_mask = (ndimage.binary_dilation(target, structure, band) & ~ndimage.binary_erosion(target, structure, band))
        else:
            band_mask = np.zeros_like(target)
        self.band = np.flatnonzero(band_mask).astype(np.int64)
        self.head = np.flatnonzero(normalized[0] > BACKGROUND + 1e-3).astype(np.int64)  # brighter than background
        del normalized
        self.foreground = np.flatnonzero(target).astype(np.int64)
        self.axes = [torch.as_tensor(centred_positions(n, s), dtype=torch.float64) for n, s in zip(self.shape, self.spacing, strict=True)]

    def positions(self, flat: np.ndarray) -> torch.Tensor:
        """Image-space positions (P, 3) of flat voxel indices."""
        index = np.unravel_index(flat, self.shape)
        return torch.stack([self.axes[a][torch.from_numpy(index[a])] for a in range(3)], dim=1)

    def nearest(self, positions: torch.Tensor) -> torch.Tensor:
        """Flat indices of the voxels containing image-space positions (clamped into the volume)."""
        spacing = torch.tensor(self.spacing, dtype=positions.dtype)
        size = torch.tensor(self.shape)
        index = torch.round(positions / spacing + (size - 1) / 2).long()
        index = torch.minimum(torch.clamp(index, min=0), size - 1)
        return (index[:, 0] * size[1] + index[:, 1]) * size[2] + index[:, 2]


class Trainer:
    """One model, its optimiser and the random streams; ``step()`` runs one iteration."""

    def __init__(self, model: OSSNet, volumes: list[TrainingVolume], settings: TrainingSettings, seed: int) -> None:
        self.model, self.volumes, self.settings = model, volumes, settings
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "numpy_rng": self.rng.bit_generator.state, "torch_rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.generator.set_state(state["torch_rng"])

    def learning_rate(self, iteration: int) -> float:
        s = self.settings
        return warmup_cosine(iteration, s.iterations, s.lr, s.warmup)

    def random_transform(self, volume: TrainingVolume) -> Transform:
        s, rng = self.settings, self.rng
        flip = torch.tensor([-1.0 if rng.random() < 0.5 else 1.0 for _ in range(3)], dtype=torch.float64)
        scale = float(rng.uniform(*s.scale_range)) if rng.random() < s.scale_probability else 1.0
        half = volume.extent / 2
        if rng.random() >= s.crop_probability:
            return Transform(flip, scale, torch.zeros(3, dtype=torch.float64), -half, half)
        size = torch.tensor(rng.uniform(*s.crop_range, size=3))
        size = torch.minimum(size, volume.extent)
        # Centre on a random tumour voxel most of the time (that is where the work is), else anywhere.
        if len(volume.foreground) and rng.random() < 0.8:
            anchor = volume.positions(volume.foreground[[int(rng.integers(len(volume.foreground)))]])[0]
            centre = anchor + torch.tensor(rng.uniform(-0.4, 0.4, size=3)) * size
        else:
            centre = torch.tensor(rng.uniform(-1, 1, size=3)) * (half - size / 2)
        centre = torch.maximum(torch.minimum(centre, half - size / 2), -half + size / 2)
        return Transform(flip, scale, centre, centre - size / 2, centre + size / 2)

    def draw_points(self, volume: TrainingVolume, transform: Transform, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-space positions (count, 3) inside the crop box and their labels (count,)."""
        s, rng = self.settings, self.rng
        wanted = [int(count * s.boundary_fraction), int(count * s.head_fraction)]
        wanted.append(count - sum(wanted))
        chunks = []
        for pool, n in ((volume.band, wanted[0]), (volume.head, wanted[1])):
            if n == 0 or len(pool) == 0:
                wanted[2] += n
                continue
            flat = pool[rng.integers(len(pool), size=3 * n)]
            positions = volume.positions(flat)
            inside = transform.inside(positions)
            positions = positions[inside][:n]
            wanted[2] += n - len(positions)
            chunks.append(positions)
        low, high = transform.low, transform.high
        chunks.append(low + (high - low) * torch.from_numpy(rng.random((wanted[2], 3))))
        positions = torch.cat(chunks)
        if rng.random() < s.jitter_probability:
            jitter = torch.from_numpy(rng.uniform(-0.5, 0.5, size=positions.shape)) * torch.tensor(volume.spacing)
            positions = torch.maximum(torch.minimum(positions + jitter, high), low)
        labels = volume.target.reshape(-1)[volume.nearest(positions)]
        return positions, labels.float()

    def augment_intensity(self, values: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor,
                          noise: float) -> torch.Tensor:
        """Brightness and offset per channel, and noise, inside the head (background stays background).
        ``values`` has channels on axis 1."""
        shape = [1, -1] + [1] * (values.dim() - 2)
        inside = values > BACKGROUND + 1e-3
        changed = values * gain.reshape(shape) + offset.reshape(shape)
        if noise > 0:
            changed = changed + noise * torch.randn(values.shape, generator=self.generator)
        return torch.where(inside, changed, values)

    def coarse_target(self, volume: TrainingVolume, grid: tuple[int, ...], transform: Transform) -> torch.Tensor:
        """Max-pooled tumour indicator on the coarse head's grid (model space)."""
        config = self.model.config
        axes = [torch.as_tensor(centred_positions(n, config.encoder_spacing)) for n in grid]
        positions = transform.to_image(torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3))
        values = sample(volume.target_volume, volume.sampler.extent, positions.float())[0]
        values = values * transform.inside(positions).float()
        fine = (values > 0.01).float().reshape(1, 1, *grid)
        return F.max_pool3d(fine, 2**config.coarse_block)

    def step(self, iteration: int) -> dict[str, float]:
        s, config, rng = self.settings, self.model.config, self.rng
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(iteration)
        volume = self.volumes[int(rng.integers(len(self.volumes)))]
        transform = self.random_transform(volume)
        channels = config.in_channels
        gain = torch.from_numpy(rng.uniform(1 - s.brightness, 1 + s.brightness, size=channels)).float()
        offset = torch.from_numpy(rng.uniform(-s.offset, s.offset, size=channels)).float()
        noise = float(rng.uniform(0, s.noise_std)) if rng.random() < s.noise_probability else 0.0

        extent = ((transform.high - transform.low) * transform.scale).tolist()
        grid = encoder_grid_shape(extent, config.encoder_spacing, config.pooling)
        image = volume.sampler.encoder_input(grid, config.encoder_spacing, transform)
        image = self.augment_intensity(image, gain, offset, noise)
        target = self.coarse_target(volume, grid, transform)

        positions, labels = self.draw_points(volume, transform, s.points)
        points = transform.to_model(positions).float()
        patches = volume.sampler.patches(points, config.patch_size, config.patch_spacing, transform)
        patches = self.augment_intensity(patches, gain, offset, noise)

        encoding = self.model.encode(image, config.encoder_spacing)
        logits = self.model.decode(encoding, points, patches)
        point_loss = F.binary_cross_entropy_with_logits(logits, labels)
        coarse_loss = F.binary_cross_entropy_with_logits(encoding.coarse_logits, target)
        loss = point_loss + s.coarse_weight * coarse_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        with torch.no_grad():
            accuracy = float(((logits > 0).float() == labels).float().mean())
        return {"loss": loss.item(), "point_loss": point_loss.item(), "coarse_loss": coarse_loss.item(),
                "point_accuracy": accuracy}


def dense_dice(model: OSSNet, case: Case, chunk_size: int = 8192) -> dict[str, float]:
    """Whole-tumour Dice over every voxel of the case's own grid (coarse-to-fine inference)."""
    from EfficientSegmentationCommon.metrics import dice

    result = segment(model, case.images, case.spacing, chunk_size=chunk_size)
    return {"dice": round(dice(result.labels > 0, case.target), 4), "decoded_fraction": round(result.decoded_fraction, 4),
            "seconds": result.seconds}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    parser.add_argument("--work-dir", type=Path, required=True, help="checkpoints and log; resumed from if present")
    parser.add_argument("--output", type=Path, required=True, help="where the trained weights are written")
    parser.add_argument("--iterations", type=int, default=TrainingSettings.iterations)
    parser.add_argument("--points", type=int, default=TrainingSettings.points)
    parser.add_argument("--lr", type=float, default=TrainingSettings.lr)
    parser.add_argument("--warmup", type=int, default=TrainingSettings.warmup)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0)
    parser.add_argument("--eval-every", type=int, default=500, help="dense validation Dice every N iterations (0: never)")
    parser.add_argument("--decoder-width", type=int, default=None)
    parser.add_argument("--decoder-blocks", type=int, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    config = default_config()
    if args.decoder_width is not None:
        config.decoder_width = args.decoder_width
    if args.decoder_blocks is not None:
        config.decoder_blocks = args.decoder_blocks
    settings = TrainingSettings(points=args.points, lr=args.lr, warmup=args.warmup, iterations=args.iterations)
    model = OSSNet(config)
    split = read_split(args.split)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    log = (args.work_dir / "log.jsonl").open("a")

    print("loading and preparing cases ...", flush=True)
    train_cases = [load_case(args.data, i, config.inputs) for i in split["train"]]
    validation_cases = [load_case(args.data, i, config.inputs) for i in split["validation"]]
    trainer = Trainer(model, [TrainingVolume(c, config, settings.band) for c in train_cases], settings, args.seed)
    del train_cases

    start_iteration, elapsed, history = 0, 0.0, []
    checkpoint_path = args.work_dir / "checkpoint.pt"
    if checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, weights_only=False)
        trainer.load_state_dict(checkpoint["trainer"])
        torch.set_rng_state(checkpoint["global_rng"])
        start_iteration, elapsed, history = checkpoint["iteration"], checkpoint["elapsed"], checkpoint["history"]
        print(f"resumed at iteration {start_iteration} ({elapsed / 60:.1f} min trained)", flush=True)
    print(f"{len(trainer.volumes)} training and {len(validation_cases)} validation cases; "
          f"{model.parameter_count} parameters; config {config.to_dict()}; settings {asdict(settings)}", flush=True)

    def save_checkpoint(iteration: int) -> None:
        state = {"trainer": trainer.state_dict(), "iteration": iteration, "elapsed": elapsed, "history": history,
                 "global_rng": torch.get_rng_state(), "args": {k: str(v) for k, v in vars(args).items()}}
        torch.save(state, checkpoint_path.with_suffix(".tmp"))
        checkpoint_path.with_suffix(".tmp").replace(checkpoint_path)

    last_save = session_start = time.monotonic()
    bar = tqdm(range(start_iteration, args.iterations), initial=start_iteration, total=args.iterations,
               mininterval=30, file=sys.stdout, desc="training")
    started = time.monotonic() - elapsed
    running: dict[str, float] = {}
    for iteration in bar:
        values = trainer.step(iteration)
        running = {k: v if k not in running else 0.98 * running[k] + 0.02 * v for k, v in values.items()}
        bar.set_postfix(loss=f"{running['loss']:.4f}", acc=f"{running['point_accuracy']:.3f}", refresh=False)
        elapsed = time.monotonic() - started
        done = iteration + 1
        evaluate_now = args.eval_every and (done % args.eval_every == 0 or done == args.iterations)
        if done % 50 == 0 or evaluate_now or done == args.iterations:
            record = {"iteration": done, "minutes": round(elapsed / 60, 2),
                      **{k: round(v, 4) for k, v in running.items()}, "lr": round(trainer.learning_rate(iteration), 6)}
            if evaluate_now:
                model.eval()
                for case in validation_cases:
                    record.update({f"val_{k}": v for k, v in dense_dice(model, case).items()})
                history.append(record)
                print(json.dumps(record), flush=True)
                save_model(args.work_dir / f"weights_{done:06d}.pt", model, {"iteration": done})
            log.write(json.dumps(record) + "\n")
            log.flush()
        if time.monotonic() - last_save > args.checkpoint_minutes * 60 or done == args.iterations:
            save_checkpoint(done)
            last_save = time.monotonic()

    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_model(args.output, model, {"iterations": args.iterations, "seed": args.seed,
                                    "train_minutes": round(elapsed / 60, 1), "threads": args.threads,
                                    "command": " ".join(["python -m OSSNetSegmentLib.training", *sys.argv[1:]]),
                                    "settings": asdict(settings), "split": split, "history": history,
                                    "hardware": hardware_description(),
                                    "cpu_minutes": round(time.process_time() / 60, 1)})
    session = time.monotonic() - session_start
    print(f"wrote {args.output} after {elapsed / 60:.1f} minutes of training "
          f"({session / max(1, args.iterations - start_iteration):.2f} s per iteration in this session)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
