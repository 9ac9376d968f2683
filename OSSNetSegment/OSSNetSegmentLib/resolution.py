"""The output grid a user asks for, and the memory it will take; plain Python, no torch.

The panel shows the grid size and the memory before a run, while the user drags the
resolution slider, so this must be cheap and must not import torch. The memory model has two
phases, and the run's peak is the larger: preparing the inputs (loading, normalising, building
the sampler the encoder and the patches read from), then decoding (the finest level holds a
label and a few masks per output voxel, and one chunk of points holds its 7x7x7 patches and
the decoder's activations). Its coefficients were fitted to the peak resident memory of
``ossnet-segment`` (which also writes the segmentation and its 3D surface) on the 240x240x155
validation case, one thread: 1.33 GB at 0.5x and 1x, 1.42 GB at 2x, 2.93 GB at 3x with 8192
points per chunk, 2.66 GB at 2x with 65536; the model reproduces each within 1%. Slicer
itself needs its own memory on top.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Points decoded per network call: about 180 MB of working memory (patches, decoder), and
# large enough that the per-call overhead does not matter.
DEFAULT_CHUNK_SIZE = 8192
# Beyond this, Slicer's segmentation (VTK image data) and the level arrays stop being practical.
MAX_OUTPUT_VOXELS = 1_000_000_000

# Memory model (bytes); see the module docstring.
FIXED_BYTES = 450e6  # Python, torch, slicer-core, the model
BYTES_PER_INPUT_VOXEL_PREPARING = 49.2  # per input voxel and channel, while the inputs are prepared
BYTES_PER_INPUT_VOXEL_HELD = 8.9  # per input voxel and channel, kept while decoding
BYTES_PER_OUTPUT_VOXEL = 8.9  # labels, masks and indices of the finest level, the label map written
BYTES_PER_CHUNK_POINT = 21.6e3  # patches (off-grid: 8x8x8 gathered and interpolated) and decoder activations


def output_spacing_for(spacing: Sequence[float], resolution: float | None = None,
                       output_spacing: float | Sequence[float] | None = None) -> tuple[float, float, float]:
    """Output spacing (I, J, K mm) for an input of ``spacing``: ``resolution`` x finer (2: half
    the spacing, 0.5: twice it), or ``output_spacing`` in mm (one value or three), or the
    input's own spacing when neither is given."""
    if resolution is not None and output_spacing is not None:
        raise ValueError("give resolution or outputSpacing, not both")
    spacing = np.asarray(spacing, dtype=np.float64)
    if resolution is not None:
        if not np.isfinite(resolution) or resolution <= 0:
            raise ValueError(f"resolution must be a positive factor, got {resolution}")
        new = spacing / float(resolution)
    elif output_spacing is not None:
        new = np.broadcast_to(np.asarray(output_spacing, dtype=np.float64), (3,)).copy()
        if np.any(new <= 0) or not np.all(np.isfinite(new)):
            raise ValueError(f"output spacing must be positive, got {new.tolist()}")
    else:
        new = spacing.copy()
    return tuple(float(s) for s in new)


def output_shape(shape_kji: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, int, int]:
    """The output grid's shape (KJI): the input box over the new spacing, rounded, as
    ``VolumeGeometry.with_spacing`` and the inference build it."""
    size_ijk = np.maximum(1, np.round(np.asarray(shape_kji[::-1], dtype=np.float64) * np.asarray(spacing)
                                      / np.asarray(new_spacing))).astype(int)
    return tuple(int(n) for n in size_ijk[::-1])


def check_output_size(shape_kji: Sequence[int]) -> None:
    """Raise ValueError when the output grid is too large to hold (the message says what to do)."""
    voxels = int(np.prod(shape_kji, dtype=np.int64))
    if voxels > MAX_OUTPUT_VOXELS:
        raise ValueError(f"The output grid would have {voxels / 1e6:,.0f} million voxels "
                         f"({' x '.join(str(n) for n in shape_kji[::-1])}); choose a coarser resolution or an ROI.")


def memory_estimate(input_shape_kji: Sequence[int], channels: int, output_shape_kji: Sequence[int],
                    chunk_size: int) -> float:
    """Expected peak resident memory (bytes) of a run, from the memory model above."""
    input_values = float(np.prod(input_shape_kji, dtype=np.float64)) * channels
    output_voxels = float(np.prod(output_shape_kji, dtype=np.float64))
    preparing = FIXED_BYTES + BYTES_PER_INPUT_VOXEL_PREPARING * input_values
    decoding = (FIXED_BYTES + BYTES_PER_INPUT_VOXEL_HELD * input_values + BYTES_PER_OUTPUT_VOXEL * output_voxels
                + BYTES_PER_CHUNK_POINT * chunk_size)
    return max(preparing, decoding)


def format_bytes(count: float) -> str:
    """1.2 GB, 350 MB: the precision a user needs to judge whether it fits."""
    if count >= 1e9:
        return f"{count / 1e9:.1f} GB"
    return f"{count / 1e6:.0f} MB"


def grid_summary(input_shape_kji: Sequence[int], spacing: Sequence[float], channels: int, resolution: float,
                 chunk_size: int) -> str:
    """What the panel shows under the resolution slider: the output grid, its spacing and the
    memory the run will need, e.g. '480 x 480 x 310 voxels of 0.5 x 0.5 x 0.5 mm (71 million); about 1.6 GB'."""
    new_spacing = output_spacing_for(spacing, resolution)
    shape = output_shape(input_shape_kji, spacing, new_spacing)
    voxels = float(np.prod(shape, dtype=np.float64))
    count = f"{voxels / 1e6:.1f} million" if voxels >= 1e6 else f"{voxels / 1e3:.0f} thousand"
    text = (f"{' x '.join(str(n) for n in shape[::-1])} voxels of {' x '.join(f'{s:.3g}' for s in new_spacing)} mm "
            f"({count}); about {format_bytes(memory_estimate(input_shape_kji, channels, shape, chunk_size))} of memory")
    if voxels > MAX_OUTPUT_VOXELS:
        text += " - too large: choose a coarser resolution or an ROI"
    return text
