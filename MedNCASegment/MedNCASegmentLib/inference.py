"""Stochastic inference: several automaton runs give a segmentation, its uncertainty and a quality score.

All volumes are in Slicer's KJI order, written (D, H, W) here: D slices along K, H rows along J,
W columns along I. The 2D model segments slice by slice along D (K), which for the hippocampus
data is the axis whose slices contain the whole long axis of the structure. C is the number of
classes (segments), never an axis of the volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from EfficientSegmentationCommon.memory import release_free_memory

from .fused_cell import FusedCell, network_dtype
from .nca import MedNCA, MedNCAConfig, NCACell, StepCallback
from .preprocessing import normalize_intensity, pad_to_multiple, slice_stack

# Full-resolution pixels (runs x slices x rows x columns) the fused 2D automaton updates at once:
# a tile of (slice, run) pairs. Every pixel of a tile holds about 0.6 kB (float32 state, its
# network-precision copy, the 128-wide hidden layer, the update, the fire mask), so a tile takes
# about 20 MB whatever the volume's size; a slice larger than this budget is one tile by itself.
# Small tiles keep the hidden layer in the CPU's caches: 16-32 k pixels were fastest on 1-2
# threads, 64 k and more slower (Testing/Benchmarks/mednca_benchmark.py, --tiles).
TILE_PIXELS = 32 * 1024
# Pixels the per-run reference path (3D models, and the 2D reference) updates at once.
PIXELS_PER_BATCH = 64 * 64 * 64

# (fraction done, message); raising inside it (e.g. a cancel request) aborts the run.
ProgressCallback = Callable[[float, str], None]
# Receives the current hard labels (D, H, W) uint8 of the whole volume while the automaton runs.
PreviewCallback = Callable[[np.ndarray], None]


@dataclass
class StochasticResult:
    """Per-class mean and standard deviation of the sigmoid outputs over the runs, (C, D, H, W)."""

    mean: np.ndarray
    std: np.ndarray
    runs: int

    @property
    def quality(self) -> np.ndarray:
        """NQM per class (M3D-NCA): sum(std) / sum(mean). High values flag a likely failure."""
        total = self.mean.reshape(self.mean.shape[0], -1).sum(axis=1)
        spread = self.std.reshape(self.std.shape[0], -1).sum(axis=1)
        return np.where(total > 0, spread / np.maximum(total, 1e-12), 0.0)

    def labels(self, largest_component: bool = True) -> np.ndarray:
        """Hard labels of the mean segmentation (see :func:`decode_labels`), by default only
        the largest connected structure (see :func:`keep_largest_component`)."""
        labels = decode_labels(self.mean)
        return keep_largest_component(labels) if largest_component else labels


def structure_spread(spread: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean spread of the runs over the voxels the result labels as structure: the second quality
    signal, beside NQM.

    Args:
        spread: the runs' standard deviation summed over the classes, (D, H, W), on the grid of
            ``labels`` (``StochasticResult.std.sum(axis=0)``).
        labels: hard labels (D, H, W), 0 background.

    Returns None when nothing is labelled (the logic warns of an empty result separately).
    NQM divides the spread of the whole output by its mass, so a confident structure with a wide,
    faint halo scores the same as a structure the runs disagree on; the spread inside the
    structure tells them apart. On the clean and corrupted validation inputs it separates
    results with Dice < 0.8 better than NQM (ROC AUC 0.855 against 0.799 over the shipped
    weights' 798 results, 0.914 against 0.866 over the previous weights';
    Testing/Benchmarks/robustness_benchmark.py, RESULTS.md).
    """
    inside = labels > 0
    return float(spread[inside].mean()) if inside.any() else None


def decode_labels(mean: np.ndarray) -> np.ndarray:
    """Hard labels 0 (background), 1..C from per-class probabilities (C, D, H, W).

    Foreground where the classes together exceed 0.5, assigned to the most probable class, so
    the border between two classes never leaves a hole that neither claims.
    """
    # Class by class, so that no volume-sized int64 (argmax) or (C, ...) temporary is made:
    # 9 bytes per voxel beside the result (the running maximum and sum, and a mask).
    labels = np.zeros(mean.shape[1:], np.uint8)
    best = mean[0].astype(np.float32, copy=True)
    total = best.copy()
    for index in range(1, mean.shape[0]):
        wins = mean[index] > best  # strictly: a tie goes to the first class, as argmax does
        labels[wins] = index
        np.maximum(best, mean[index], out=best)
        total += mean[index]
        del wins
    del best
    labels += 1
    labels[total <= 0.5] = 0
    return labels


def keep_largest_component(labels: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected foreground structure, all classes together, and clear the rest.

    The model segments one hippocampus, a single connected structure; stray islands elsewhere
    are false positives (on the validation split this raises posterior Dice by about 0.02).
    Not for inputs that contain both hippocampi: crop to one with an ROI.
    """
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return labels
    sizes = np.bincount(components.ravel())[1:]
    return np.where(components == int(np.argmax(sizes)) + 1, labels, 0).astype(labels.dtype)


def model_input(config: MedNCAConfig, normalized: np.ndarray, factor: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad a normalised (D, H, W) volume to the downscale factor and shape it as the model's batch.

    2D: a batch of slices with their neighbours, (D, input_channels, H', W').
    3D: one volume, (1, 1, D', H', W'). Also returns the slices that crop the padding away.
    """
    if config.dims == 2:
        padded, crop = pad_to_multiple(normalized, factor, axes=(1, 2))
        stack = slice_stack(padded, context=(config.input_channels - 1) // 2)
        return torch.from_numpy(np.ascontiguousarray(stack)), crop
    padded, crop = pad_to_multiple(normalized, factor, axes=(0, 1, 2))
    return torch.from_numpy(np.ascontiguousarray(padded))[None, None], crop


@torch.no_grad()
def segment(model: MedNCA, image: np.ndarray, runs: int = 10, seed: int = 0,
            global_steps: int | None = None, refinement_steps: int | None = None, downscale: int | None = None,
            progress: ProgressCallback | None = None, normalized: bool = False,
            slice_batch: int | None = None, mirror: bool = True, precision: str = "auto",
            tile_pixels: int | None = None, preview: PreviewCallback | None = None,
            preview_every: int = 4, fused: bool = True) -> StochasticResult:
    """Run the automaton ``runs`` times on a (D, H, W) volume already on the model's grid.

    ``image`` is raw intensities, or already scaled by :func:`normalize_intensity` when
    ``normalized`` (callers that resample normalise first, on the original voxels). Seeded:
    the same seed gives the same result, whatever the tiling. ``downscale`` overrides the factor
    of the global stage (a coarser global grid is faster and sees more context per step).
    ``progress`` is called after every automaton step, so raising from it (a cancel request)
    stops promptly. With ``mirror``, every second run sees the volume mirrored along I
    (left-right; the model is trained with flips), so the ensemble also averages over the mirror
    image at no extra cost (on 12 validation cases, 4 plain + 4 mirrored runs beat 4 plain runs
    by 0.004-0.015 Dice per class; the same number of plain runs was not compared).

    2D models without batch norm (Med-NCA) run the fused cell (:class:`FusedCell`) on tiles of
    (slice, run) pairs, all runs of a slice batched together: ``tile_pixels`` full-resolution
    pixels at once (default :data:`TILE_PIXELS`; ``slice_batch`` instead asks for that many
    slices with all their runs), in ``precision`` (``auto``: bfloat16 where the CPU computes it
    natively, else float32; the state stays float32). Each (slice, run) pair draws its fire
    masks from its own generator seeded by (seed, slice, run), so the tiling never changes the
    result. Memory: about 20 bytes per voxel (the normalised volume and the float32 mean and
    std) plus one tile (see :data:`TILE_PIXELS`), whatever the volume's size. ``preview``, if
    given, receives the current labels (D, H, W) every ``preview_every`` steps: finished slices
    from their mean, the slices of the running tile from the first run's current state, others 0;
    its last call gets ``decode_labels(result.mean)``. ``fused=False`` runs the training-time
    layers (float32, channels-first) on the same tiles instead of the fused cell: the same result
    up to rounding, slower; for checking and benchmarking. Other models run :func:`segment_per_run`.

    Raises ValueError for ``runs`` < 1 or an unknown ``precision``.
    """
    if runs < 1:
        raise ValueError("runs must be at least 1")
    dtype = network_dtype(precision)
    model.eval()
    config = model.config
    try:
        if config.dims != 2 or config.batch_norm:
            return segment_per_run(model, image, runs, seed, global_steps, refinement_steps, downscale, progress,
                                   normalized, slice_batch, mirror)
        return _segment_tiled(model, image, runs, seed, global_steps, refinement_steps, downscale, progress,
                              normalized, slice_batch, mirror, dtype, tile_pixels, preview, preview_every, fused)
    finally:
        # Return the run's freed memory to the system, so that a session of many runs stays flat
        # (glibc keeps it otherwise; measured in Testing/Benchmarks/mednca_speed.py --retention).
        release_free_memory()


def _segment_tiled(model: MedNCA, image: np.ndarray, runs: int, seed: int, global_steps: int | None,
                   refinement_steps: int | None, downscale: int | None, progress: ProgressCallback | None,
                   normalized: bool, slice_batch: int | None, mirror: bool, dtype: torch.dtype,
                   tile_pixels: int | None, preview: PreviewCallback | None, preview_every: int,
                   fused: bool) -> StochasticResult:
    """:func:`segment` for 2D models without batch norm: tiles of (slice, run) pairs."""
    config = model.config
    volume = image if normalized else normalize_intensity(image)
    volume = np.asarray(volume, dtype=np.float32)
    plan = _TilePlan(config, volume.shape, runs, seed, global_steps, refinement_steps, downscale,
                     slice_batch, tile_pixels)
    if fused:
        cells = (FusedCell(model.global_cell, dtype), FusedCell(model.refinement_cell, dtype))
    else:
        cells = (_LayerCell(model.global_cell), _LayerCell(model.refinement_cell))
    mean = np.zeros((config.num_classes, *volume.shape), np.float32)
    std = np.zeros_like(mean)
    sums: dict[int, list] = {}  # slice -> [sum, sum of squares, runs so far], float64, for unfinished slices
    watcher = _Preview(preview, preview_every, plan, mean, config.input_channels) if preview is not None else None
    for tile_index, items in enumerate(plan.tiles):
        def on_step(stage: str, step: int, stage_total: int, state: torch.Tensor, items=items, tile_index=tile_index) -> None:
            if progress is not None:
                done = tile_index * plan.steps_per_tile + step + (plan.global_count if stage == "refinement" else 0)
                first, last = items[0][0] + 1, items[-1][0] + 1
                progress(done / plan.total_steps, f"{stage} step {step}/{stage_total}, slices {first}-{last} of {plan.depth}")
            if watcher is not None:
                watcher.step(step + (plan.global_count if stage == "refinement" else 0), items, state)

        probabilities = _run_tile(cells, config, volume, items, plan, seed, mirror, on_step)
        for (slice_index, _run), p in zip(items, probabilities.double().numpy(), strict=True):
            entry = sums.setdefault(slice_index, [0.0, 0.0, 0])
            entry[0] = entry[0] + p
            entry[1] = entry[1] + p**2
            entry[2] += 1
            if entry[2] == runs:
                average = entry[0] / runs
                variance = np.maximum(entry[1] / runs - average**2, 0.0)
                mean[:, slice_index] = average[(slice(None), *plan.crop)]
                std[:, slice_index] = np.sqrt(variance)[(slice(None), *plan.crop)]
                del sums[slice_index]
                if watcher is not None:
                    watcher.finished(slice_index)
    if watcher is not None:
        preview(decode_labels(mean))
    return StochasticResult(mean, std, runs)


class _TilePlan:
    """Which (slice, run) pairs go together, on which padded grid, in how many steps."""

    def __init__(self, config: MedNCAConfig, shape: tuple[int, ...], runs: int, seed: int,
                 global_steps: int | None, refinement_steps: int | None, downscale: int | None,
                 slice_batch: int | None, tile_pixels: int | None) -> None:
        self.factor = config.downscale if downscale is None else downscale
        self.global_count = config.global_steps if global_steps is None else global_steps
        self.refinement_count = config.refinement_steps if refinement_steps is None else refinement_steps
        self.depth = shape[0]
        _, crop = pad_to_multiple(np.empty((1, *shape[1:]), np.uint8), self.factor, axes=(1, 2))
        self.crop = crop[1:]  # rows, columns of the padded slice that are the input's
        self.padded = tuple(-(-size // self.factor) * self.factor for size in shape[1:])
        if slice_batch is not None:
            per_tile = max(1, slice_batch) * runs
        else:
            per_tile = max(1, (TILE_PIXELS if tile_pixels is None else tile_pixels) // (self.padded[0] * self.padded[1]))
        items = [(d, r) for d in range(self.depth) for r in range(runs)]
        self.tiles = [items[i: i + per_tile] for i in range(0, len(items), per_tile)]
        self.steps_per_tile = max(1, self.global_count + self.refinement_count)
        self.total_steps = len(self.tiles) * self.steps_per_tile


def _generator(seed: int, slice_index: int, run: int) -> torch.Generator:
    """The fire-mask generator of one (slice, run) pair, independent of how pairs are batched."""
    state = np.random.SeedSequence([seed % 2**63, slice_index, run]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class _LayerCell:
    """A training-time cell (:meth:`NCACell.update`) with the fused cell's interface."""

    memory_format = torch.contiguous_format

    def __init__(self, cell: NCACell) -> None:
        self.cell, self.fire_rate = cell, cell.fire_rate

    def step(self, state: torch.Tensor, fire: torch.Tensor) -> None:
        state.copy_(self.cell.update(state, fire))


def _tile_image(config: MedNCAConfig, volume: np.ndarray, items: list[tuple[int, int]], factor: int,
                mirror: bool) -> torch.Tensor:
    """The model input of a tile: each pair's slice with its neighbours, padded to the factor,
    mirrored along I for odd runs; (N, input_channels, H', W')."""
    context = (config.input_channels - 1) // 2
    slices = np.array([d for d, _ in items])
    neighbours = np.clip(slices[:, None] + np.arange(-context, context + 1)[None, :], 0, volume.shape[0] - 1)
    stack, _ = pad_to_multiple(volume[neighbours], factor, axes=(2, 3))
    tensor = torch.from_numpy(stack)
    mirrored = [i for i, (_, run) in enumerate(items) if mirror and run % 2 == 1]
    if mirrored:
        tensor[mirrored] = tensor[mirrored].flip(-1)
    return tensor


def _run_tile(cells: tuple[FusedCell | _LayerCell, FusedCell | _LayerCell], config: MedNCAConfig, volume: np.ndarray,
              items: list[tuple[int, int]], plan: _TilePlan, seed: int, mirror: bool,
              on_step: StepCallback) -> torch.Tensor:
    """Both stages on one tile; sigmoid probabilities (N, num_classes, H', W'), mirrored runs
    flipped back. The same arithmetic as :meth:`MedNCA.forward` with the fused cells."""
    image = _tile_image(config, volume, items, plan.factor, mirror)
    generators = [_generator(seed, d, r) for d, r in items]
    layout = cells[0].memory_format
    small = F.avg_pool2d(image, plan.factor)
    state = torch.zeros((len(items), config.channels, *small.shape[2:])).contiguous(memory_format=layout)
    state[:, : config.input_channels] = small
    stages = (("global", cells[0], plan.global_count), ("refinement", cells[1], plan.refinement_count))
    for stage, cell, count in stages:
        if stage == "refinement":
            state = F.interpolate(state, scale_factor=plan.factor, mode="nearest").contiguous(memory_format=layout)
            state[:, : config.input_channels] = image
        # Each pair's masks for the whole stage in one draw: (steps, pairs, 1, H, W).
        draws = torch.stack([torch.rand((count, 1, *state.shape[2:]), generator=g) for g in generators], dim=1)
        fire = (draws < cell.fire_rate).float()
        del draws
        for step in range(count):
            cell.step(state, fire[step])
            on_step(stage, step + 1, count, state)
    logits = state[:, config.input_channels: config.input_channels + config.num_classes]
    probabilities = torch.sigmoid(logits).contiguous()
    flipped = [i for i, (_, run) in enumerate(items) if mirror and run % 2 == 1]
    if flipped:
        probabilities[flipped] = probabilities[flipped].flip(-1)
    return probabilities


class _Preview:
    """The labels a preview shows while the automaton runs (see :func:`segment`)."""

    def __init__(self, callback: PreviewCallback, every: int, plan: _TilePlan, mean: np.ndarray,
                 input_channels: int) -> None:
        self.callback, self.every, self.plan, self.mean = callback, max(1, every), plan, mean
        self.input_channels = input_channels
        self.labels = np.zeros(mean.shape[1:], np.uint8)

    def step(self, step: int, items: list[tuple[int, int]], state: torch.Tensor) -> None:
        if step % self.every:
            return
        first = {}
        for i, (d, _run) in enumerate(items):
            first.setdefault(d, i)
        rows = list(first.values())
        c = self.plan
        logits = state[rows, self.input_channels: self.input_channels + self.mean.shape[0]].float()
        if logits.shape[-2:] != c.padded:
            logits = F.interpolate(logits, size=c.padded, mode="nearest")
        mirrored = [j for j, i in enumerate(rows) if items[i][1] % 2 == 1]
        if mirrored:
            logits[mirrored] = logits[mirrored].flip(-1)
        probabilities = torch.sigmoid(logits).permute(1, 0, 2, 3).numpy()
        self.labels[list(first)] = decode_labels(probabilities[(slice(None), slice(None), *c.crop)])
        self.callback(self.labels.copy())

    def finished(self, slice_index: int) -> None:
        self.labels[slice_index] = decode_labels(self.mean[:, slice_index: slice_index + 1])[0]


@torch.no_grad()
def segment_per_run(model: MedNCA, image: np.ndarray, runs: int = 10, seed: int = 0,
                    global_steps: int | None = None, refinement_steps: int | None = None,
                    downscale: int | None = None, progress: ProgressCallback | None = None,
                    normalized: bool = False, slice_batch: int | None = None, mirror: bool = True) -> StochasticResult:
    """The reference inference: one run after another with the training-time cells
    (:meth:`MedNCA.forward`), slices in batches of ``slice_batch`` (default: as many as fit
    :data:`PIXELS_PER_BATCH`), one generator for all fire masks. Used for 3D models and
    batch-norm cells; for 2D models it is what :func:`segment` is checked against
    (Testing/Python/test_mednca_fused.py, Testing/Benchmarks/mednca_benchmark.py). Arguments as
    in :func:`segment`; memory grows with the volume (about 160 bytes per voxel).
    """
    if runs < 1:
        raise ValueError("runs must be at least 1")
    model.eval()
    config = model.config
    factor = config.downscale if downscale is None else downscale
    global_count = config.global_steps if global_steps is None else global_steps
    refinement_count = config.refinement_steps if refinement_steps is None else refinement_steps
    batch, crop = model_input(config, image if normalized else normalize_intensity(image), factor)
    generator = torch.Generator().manual_seed(seed)
    if slice_batch is None:
        slice_batch = max(1, min(64, PIXELS_PER_BATCH // (batch.shape[-1] * batch.shape[-2])))
    chunks = list(torch.split(batch, slice_batch)) if config.dims == 2 else [batch]
    steps_per_chunk = max(1, global_count + refinement_count)
    total = runs * len(chunks) * steps_per_chunk
    done = 0
    mean = square = None
    for run in range(runs):
        outputs = []
        for chunk in chunks:
            def on_step(stage: str, step: int, stage_total: int, _state: torch.Tensor, done: int = done,
                        run: int = run) -> None:
                if progress is not None:
                    offset = step if stage == "global" else global_count + step
                    progress((done + offset) / total, f"run {run + 1}/{runs}: {stage} step {step}/{stage_total}")

            mirrored = mirror and run % 2 == 1
            source = chunk.flip(-1) if mirrored else chunk
            logits = model(source, global_count, refinement_count, factor, generator=generator, on_step=on_step)
            outputs.append(torch.sigmoid(logits.flip(-1) if mirrored else logits))
            done += steps_per_chunk
        probabilities = torch.cat(outputs)
        # (D, C, H, W) for 2D, (1, C, D, H, W) for 3D -> (C, D, H, W)
        probabilities = probabilities.permute(1, 0, 2, 3) if config.dims == 2 else probabilities[0]
        array = probabilities.double().numpy()
        mean = array if mean is None else mean + array
        square = array**2 if square is None else square + array**2
    mean /= runs
    variance = np.maximum(square / runs - mean**2, 0.0)
    class_crop = (slice(None), *crop)
    return StochasticResult(mean[class_crop].astype(np.float32), np.sqrt(variance)[class_crop].astype(np.float32), runs)
