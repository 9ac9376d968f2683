"""The output grid a user asks for, and the memory it will take; no torch.

One function, :func:`plan_output_grid`, decides a run's grids (the model's and the output's)
for the logic and for the panel, which shows the grid size and the memory before a run while
the user drags the resolution slider; so this must be cheap and must not import torch. The memory model has two
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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from EfficientSegmentationCommon.errors import InputVolumeError
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.grids import axis_aligned_grid, is_axial
from EfficientSegmentationCommon.memory import format_bytes

if TYPE_CHECKING:
    from .settings import OSSNetSettings

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


@dataclass(frozen=True)
class OutputGridPlan:
    """Where a run will work and what it will cost, known before it starts.

    ``model_grid`` is the grid the network reads (the input's when it has the model's
    orientation, else an axis-aligned one of that orientation); ``output`` is the segmentation's grid: ``model_grid``'s box at the chosen
    spacing. ``memory_bytes`` is the expected peak resident memory (see the module docstring).
    """

    model_grid: VolumeGeometry
    output: VolumeGeometry
    channels: int
    chunk_size: int
    resampled: bool  # the input is oblique: it is interpolated onto ``model_grid`` (else re-indexed if needed)

    @property
    def voxels(self) -> int:
        """Output voxels."""
        return int(np.prod(self.output.shape_kji, dtype=np.int64))

    @property
    def memory_bytes(self) -> float:
        return memory_estimate(self.model_grid.shape_kji, self.channels, self.output.shape_kji, self.chunk_size)

    @property
    def too_large(self) -> bool:
        return self.voxels > MAX_OUTPUT_VOXELS

    def check(self) -> None:
        """Raise InputVolumeError (a ValueError) when the output grid is too large to hold for this
        input; the message says what to do, and a batch prints it as it is."""
        if self.too_large:
            raise InputVolumeError(f"The output grid would have {self.voxels / 1e6:,.0f} million voxels "
                                   f"({' x '.join(str(n) for n in self.output.shape_ijk)}); choose a coarser "
                                   "resolution or an ROI.")

    def summary(self) -> str:
        """What the panel shows under the resolution slider, e.g. '480 x 480 x 310 voxels of
        0.5 x 0.5 x 0.5 mm (71.4 million); about 1.6 GB of memory'."""
        voxels = float(self.voxels)
        count = f"{voxels / 1e6:.1f} million" if voxels >= 1e6 else f"{voxels / 1e3:.0f} thousand"
        text = (f"{' x '.join(str(n) for n in self.output.shape_ijk)} voxels of "
                f"{' x '.join(f'{s:.3g}' for s in self.output.spacing)} mm ({count}); "
                f"about {format_bytes(self.memory_bytes)} of memory")
        if self.resampled:
            text += " (the input is oblique: it is resampled onto an axis-aligned grid first)"
        if self.too_large:
            text += " - too large: choose a coarser resolution or an ROI"
        return text


def ras_spacing(geometry: VolumeGeometry) -> tuple[float, float, float]:
    """Spacing along R, A, S: that of the voxel axis closest to each patient axis."""
    closest = np.argmax(np.abs(geometry.direction), axis=1)
    return tuple(float(geometry.spacing[axis]) for axis in closest)


def plan_output_grid(input_grid: VolumeGeometry, channels: int, settings: OSSNetSettings,
                     orientation: str) -> OutputGridPlan:
    """The one place that decides a run's grids: the model's and the output's, with its memory.

    The model reads its input on an axis-aligned grid of its training data's ``orientation``
    (the registry entry's; "LPS" for the BraTS model) at the input's spacing along R, A, S. An
    input whose axes are the patient axes (any order, any flips) shares its voxel centres with
    that grid, so its voxels are re-indexed, not interpolated (``resampling.resample``), and the
    same scan stored LPS or RAS gives the same result; an oblique one is resampled
    (``resampled``). The output grid covers the model grid's box at ``settings.output_spacing``
    (mm) when given, else at the model grid's spacing divided by ``settings.resolution`` (2:
    twice as fine); its size is the box over the new spacing, rounded
    (``VolumeGeometry.with_spacing``).

    Args:
        input_grid: the first input's grid, or its ROI box.
        channels: the model's input volumes (memory scales with them).
        settings: the run's ``OSSNetSettings`` (resolution or output spacing, chunk size).
        orientation: the model's (``ModelEntry.orientation``).
    """
    resampled = not is_axial(input_grid)
    model_grid = axis_aligned_grid(input_grid, ras_spacing(input_grid), orientation)
    if model_grid.matches(input_grid, atol=1e-6):
        model_grid = input_grid
    if settings.output_spacing is not None:
        spacing = np.broadcast_to(np.asarray(settings.output_spacing, dtype=np.float64), (3,))
    else:
        spacing = np.asarray(model_grid.spacing) / float(settings.resolution)
    return OutputGridPlan(model_grid, model_grid.with_spacing(spacing), channels, settings.chunk_size, resampled)


def memory_estimate(input_shape_kji: Sequence[int], channels: int, output_shape_kji: Sequence[int],
                    chunk_size: int) -> float:
    """Expected peak resident memory (bytes) of a run, from the memory model above."""
    input_values = float(np.prod(input_shape_kji, dtype=np.float64)) * channels
    output_voxels = float(np.prod(output_shape_kji, dtype=np.float64))
    preparing = FIXED_BYTES + BYTES_PER_INPUT_VOXEL_PREPARING * input_values
    decoding = (FIXED_BYTES + BYTES_PER_INPUT_VOXEL_HELD * input_values + BYTES_PER_OUTPUT_VOXEL * output_voxels
                + BYTES_PER_CHUNK_POINT * chunk_size)
    return max(preparing, decoding)
