"""Coarse-to-fine inference at any output resolution, with memory bounded by the chunk size.

The occupancy function can be queried at any point, so the output grid is the user's choice:
the input's own grid, a coarser one, or a finer one (super-resolution). Decoding every output
voxel would be wasteful, since almost all of a brain scan is far from the tumour's border:

1. the encoder reads the whole volume once; its auxiliary head gives a coarse segmentation
   (cells of ``config.coarse_spacing`` mm, trained to flag any cell that holds tumour);
2. level 0: the output grid's points at stride S (S = 4 for a 1 mm output) that lie in a cell
   the coarse head flags (dilated by ``coarse_dilation`` cells) are decoded; all other points
   are background;
3. each finer level halves the stride: points between the coarser level's points are decoded
   only within ``boundary_margin`` coarser points of the current boundary (where the labels
   of neighbouring points differ); everywhere else all surrounding points agree and the value
   is interpolated. Unless probabilities are asked for, the levels hold only the labels (one
   byte per point instead of a float): interpolating agreeing neighbours gives their label,
   and every point between disagreeing ones is decoded, so the labels are the same;
4. the decoder is called on at most ``chunk_size`` points at a time.

Arrays are in Slicer's KJI order; spacings are given in I, J, K order like
``VolumeGeometry.spacing``. The output grid covers the input's box, centred on it, exactly as
``VolumeGeometry.with_spacing`` builds it, so the Slicer logic gets the output geometry with
``geometry.with_spacing(result.spacing)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from EfficientSegmentationCommon.errors import CancelledError
from EfficientSegmentationCommon.geometry import VolumeGeometry

from .network import OSSNet
from .preprocessing import VolumeSampler, centred_positions, encoder_grid_shape, normalize_images

# (fraction done, message); raising inside it aborts the run.
ProgressCallback = Callable[[float, str], None]
# Called after each level as decode_hook(level, stride, decoded, previous_labels): ``decoded`` are the
# (P, 3) KJI indices on this level's grid of the points decoded there, ``previous_labels`` the
# coarser level's labels (None at level 0). For tests and diagnostics.
DecodeHook = Callable[[int, int, np.ndarray, "np.ndarray | None"], None]


@dataclass
class LevelStats:
    stride: int  # in output voxels
    spacing: tuple[float, float, float]  # of this level's points, I, J, K mm
    points: int  # points on this level's grid
    decoded: int  # of them, decoded at this level
    seconds: float


@dataclass
class SegmentationResult:
    labels: np.ndarray  # uint8 (K, J, I) on the output grid: 1 = whole tumour, 0 = background
    spacing: tuple[float, float, float]  # output spacing, I, J, K mm
    decoded_fraction: float  # output voxels decoded / output voxels
    decoded_points: int  # decoder queries in all
    levels: list[LevelStats] = field(default_factory=list)
    probabilities: np.ndarray | None = None  # float32 (K, J, I), when asked for
    seconds: float = 0.0

    @property
    def shape(self) -> tuple[int, int, int]:
        """Output grid shape, KJI."""
        return tuple(self.labels.shape)


def output_grid(shape: Sequence[int], spacing: Sequence[float],
                output_spacing: Sequence[float] | float | None = None) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Output shape (KJI) and spacing (I, J, K mm) for an input of ``shape`` (KJI) and ``spacing``
    (I, J, K mm): the input's box at ``output_spacing`` (mm, one value or three; default the input
    spacing), sized as ``VolumeGeometry.with_spacing`` sizes it (the one formula)."""
    new = np.broadcast_to(np.asarray(spacing if output_spacing is None else output_spacing, dtype=np.float64), (3,))
    if np.any(new <= 0) or not np.all(np.isfinite(new)):
        raise ValueError(f"output spacing must be positive, got {new.tolist()}")
    geometry = VolumeGeometry.compose(tuple(shape), spacing).with_spacing(new)
    return geometry.shape_kji, tuple(float(s) for s in new)


def level_strides(spacing: Sequence[float] | float, coarsest_spacing: float = 4.0, max_levels: int = 4) -> list[int]:
    """Strides (output voxels) of the levels, coarsest first: the coarsest level's points are at
    most ``coarsest_spacing`` mm apart along the finest axis (4, 2, 1 for a 1 mm output, as in
    the paper) and at most twice that along the coarsest axis (thick slices)."""
    spacing = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    levels = 1
    while (levels < max_levels and 2**levels * spacing.min() <= coarsest_spacing + 1e-9
           and 2**levels * spacing.max() <= 2 * coarsest_spacing + 1e-9):
        levels += 1
    return [2**i for i in reversed(range(levels))]


def _upsample_linear(values: np.ndarray) -> np.ndarray:
    """A nested grid's values on the grid of half the stride (size 2n - 1 per axis), linear."""
    out = values
    for axis in range(3):
        n = out.shape[axis]
        if n == 1:
            continue
        shape = list(out.shape)
        shape[axis] = 2 * n - 1
        new = np.empty(shape, dtype=out.dtype)
        even = [slice(None)] * 3
        odd = [slice(None)] * 3
        even[axis], odd[axis] = slice(0, None, 2), slice(1, None, 2)
        new[tuple(even)] = out
        low, high = [slice(None)] * 3, [slice(None)] * 3
        low[axis], high[axis] = slice(0, -1), slice(1, None)
        if out.dtype == bool:
            new[tuple(odd)] = out[tuple(low)] | out[tuple(high)]
        else:
            new[tuple(odd)] = (out[tuple(low)] + out[tuple(high)]) * 0.5
        out = new
    return out


def _place(values: np.ndarray) -> np.ndarray:
    """A nested grid's boolean values at the even points of the finer grid, False between."""
    shape = [2 * n - 1 for n in values.shape]
    out = np.zeros(shape, dtype=bool)
    out[::2, ::2, ::2] = values
    return out


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Points whose label differs from one of their 6 neighbours (both sides of the border)."""
    out = np.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        if labels.shape[axis] < 2:
            continue
        a, b = [slice(None)] * 3, [slice(None)] * 3
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        differ = labels[tuple(a)] != labels[tuple(b)]
        out[tuple(a)] |= differ
        out[tuple(b)] |= differ
    return out


class _Decoder:
    """Decodes points in chunks, reporting progress and honouring cancellation between chunks."""

    def __init__(self, model: OSSNet, encoding, sampler: VolumeSampler, chunk_size: int,
                 cancel: Callable[[], bool] | None) -> None:
        self.model, self.encoding, self.sampler = model, encoding, sampler
        self.chunk_size, self.cancel = chunk_size, cancel
        self.count = 0

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise CancelledError("Segmentation was cancelled.")

    def __call__(self, positions: Callable[[int, int], torch.Tensor], total: int,
                 report: Callable[[float], None]) -> np.ndarray:
        out = np.empty(total, dtype=np.float32)
        for start in range(0, total, self.chunk_size):
            self.check_cancel()
            stop = min(total, start + self.chunk_size)
            points = positions(start, stop)
            config = self.model.config
            patches = self.sampler.patches(points, config.patch_size, config.patch_spacing)
            logits = self.model.decode(self.encoding, points, patches)
            out[start:stop] = torch.sigmoid(logits).numpy()
            self.count += stop - start
            report(stop / total)
        return out


@torch.no_grad()
def segment(model: OSSNet, images: Sequence[np.ndarray], spacing: Sequence[float],
            output_spacing: Sequence[float] | float | None = None,
            chunk_size: int = 8192, progress: ProgressCallback | None = None,
            cancel: Callable[[], bool] | None = None, return_probabilities: bool = False,
            levels: int | None = None, coarsest_spacing: float = 4.0, threshold: float = 0.5,
            coarse_threshold: float = 0.5, coarse_dilation: int = 1, boundary_margin: int = 1,
            normalized: bool = False, decode_hook: DecodeHook | None = None) -> SegmentationResult:
    """Segment one volume: ``images`` are the model's inputs (``model.config.inputs``, e.g. FLAIR
    and T1c), KJI arrays on one grid of ``spacing`` (I, J, K mm).

    The output grid is the input's box at ``output_spacing`` (mm; default the input spacing; see
    :func:`output_grid`). ``chunk_size`` bounds the points per decoder call
    and so the decoder's memory, whatever the output resolution. ``levels`` overrides the
    number of coarse-to-fine levels (1: decode every point the coarse head flags).
    ``cancel()`` returning True raises ``CancelledError`` at the next chunk. Inference is
    deterministic: the same inputs give the same result, whatever the chunk size.
    """
    started = time.perf_counter()
    config = model.config
    if len(images) != config.in_channels:
        raise ValueError(f"the model takes {config.in_channels} images ({', '.join(config.inputs)}), got {len(images)}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    model.eval()
    report = progress or (lambda fraction, message: None)
    spacing_kji = tuple(float(s) for s in reversed(tuple(spacing)))
    volume = np.stack([np.asarray(i, dtype=np.float32) for i in images]) if normalized else normalize_images(images)
    shape_in = volume.shape[1:]
    out_shape, out_spacing = output_grid(shape_in, spacing, output_spacing)
    out_spacing_kji = out_spacing[::-1]

    report(0.0, "encoding the volume")
    sampler = VolumeSampler(volume, spacing_kji, config.encoder_spacing, config.patch_spacing)
    del volume
    grid = encoder_grid_shape(sampler.extent, config.encoder_spacing, config.pooling)
    encoding = model.encode(sampler.encoder_input(grid, config.encoder_spacing))
    decoder = _Decoder(model, encoding, sampler, chunk_size, cancel)
    decoder.check_cancel()
    report(0.1, "decoding")

    strides = level_strides(out_spacing, coarsest_spacing) if levels is None else [2**i for i in reversed(range(levels))]
    top = strides[0]
    # Output grid padded at the far end so that every level nests in the next (extra points are cropped).
    padded = [top * math.ceil((n - 1) / top) + 1 for n in out_shape]
    # Point positions (mm from the box centre) along each axis; they follow the unpadded grid's centring.
    axes = [torch.as_tensor(centred_positions(n, s)[0] + np.arange(p) * s, dtype=torch.float32)
            for p, n, s in zip(padded, out_shape, out_spacing_kji, strict=True)]

    def positions_of(indices: np.ndarray, stride: int) -> Callable[[int, int], torch.Tensor]:
        def get(start: int, stop: int) -> torch.Tensor:
            chunk = torch.from_numpy(indices[start:stop] * stride)
            return torch.stack([axes[a][chunk[:, a]] for a in range(3)], dim=1)
        return get

    stats: list[LevelStats] = []
    probability = decoded = labels = None
    for level, stride in enumerate(strides):
        level_started = time.perf_counter()
        if level == 0:
            shape = tuple((p - 1) // stride + 1 for p in padded)
            probability = np.zeros(shape, dtype=np.float32 if return_probabilities else bool)
            # Candidates: points in a cell the coarse head flags, tested in chunks too.
            candidates = np.zeros(int(np.prod(shape)), dtype=bool)
            flat = np.arange(candidates.size)
            block = max(chunk_size, 65536)
            for start in range(0, candidates.size, block):
                indices = np.stack(np.unravel_index(flat[start:start + block], shape), axis=1)
                points = positions_of(indices, stride)(0, len(indices))
                candidates[start:start + block] = (model.coarse_probability(encoding, points, coarse_dilation)
                                                   > coarse_threshold).numpy()
            to_decode = candidates.reshape(shape)
            decoded = np.zeros(shape, dtype=bool)
        else:
            labels = probability > threshold if return_probabilities else probability
            flagged = _boundary(labels)
            if boundary_margin > 0 and flagged.any():
                flagged = ndimage.binary_dilation(flagged, structure=np.ones((3, 3, 3), bool), iterations=boundary_margin)
            probability = _upsample_linear(probability)
            decoded = _place(decoded)
            to_decode = _upsample_linear(flagged) & ~decoded
            del flagged
        indices = np.argwhere(to_decode)
        del to_decode
        span = (0.1 + 0.9 * level / len(strides), 0.1 + 0.9 * (level + 1) / len(strides))
        message = f"level {level + 1}/{len(strides)} (every {stride} voxel{'s' if stride > 1 else ''}): {len(indices)} points"
        values = decoder(positions_of(indices, stride), len(indices),
                         lambda f, span=span, message=message: report(span[0] + (span[1] - span[0]) * f, message))
        if len(indices):
            index = tuple(indices.T)
            probability[index] = values if return_probabilities else values > threshold
            decoded[index] = True
        if decode_hook is not None:
            decode_hook(level, stride, indices, labels)
        labels = None
        stats.append(LevelStats(stride, tuple(float(s * stride) for s in out_spacing), int(probability.size),
                                len(indices), round(time.perf_counter() - level_started, 3)))
        del indices, values

    crop = tuple(slice(0, n) for n in out_shape)
    probability = probability[crop]
    labels = (probability > threshold if return_probabilities else probability).astype(np.uint8)
    fraction = float(decoded[crop].sum()) / labels.size
    report(1.0, "done")
    return SegmentationResult(labels, out_spacing, fraction, decoder.count, stats,
                              np.ascontiguousarray(probability) if return_probabilities else None,
                              round(time.perf_counter() - started, 3))
