"""The smallest volume Med-NCA can segment, and the largest this machine can hold, said before
the automaton starts.

The automaton's convolutions pad by reflection, which needs more cells along an axis than the
padding (``torch.nn.functional.pad``, mode "reflect"). The global stage works on the image
zero-padded to a multiple of the downscale factor and averaged down by it, so an axis of n
voxels has ceil(n / downscale) cells there; the refinement stage works on all n voxels. A
volume 2 voxels thick otherwise ends in a raw torch padding error.

The largest: the automaton itself works on bounded tiles of slices (``inference.TILE_PIXELS``),
but a run holds a few volume-sized arrays (the normalised image, the per-class mean and spread
over the runs, the labels), so its memory grows with the volume by :data:`BYTES_PER_VOXEL`.
A run that would need more than the system has available is refused up front with the estimate
(as OSS-Net's output-grid plan does), instead of swapping or being killed halfway.
"""

from __future__ import annotations

from collections.abc import Sequence

from EfficientSegmentationCommon.errors import InputVolumeError
from EfficientSegmentationCommon.memory import available_memory_bytes, format_bytes

# Memory a crop-path run adds to the process that holds the loaded volume (bytes), fitted to
# the peak RSS of `mednca-segment --runs 1 --mode crop` on 128^3, 192^3 and 256x256x180 volumes
# minus the same process's memory before the volume was loaded (Testing/Benchmarks/mednca_memory.py;
# RESULTS.md): per voxel of the larger of the input grid and the model's grid (the input's node
# and its copy, the normalised image, the float32 mean and spread per class, the labels and the
# segmentation written), and a working set (tiles of the automaton, the model, the file writer).
BYTES_PER_VOXEL = 32.0
WORKING_BYTES = 50e6


def minimum_size(downscale: int, global_kernel: int, refinement_kernel: int) -> int:
    """Fewest voxels along each axis the automaton convolves (in-plane axes for the 2D model,
    all three for the 3D one): ``ceil(n / downscale) > global_kernel // 2`` and
    ``n > refinement_kernel // 2``. For the shipped model (downscale 4, 3x3 kernels): 5."""
    return max(downscale * (global_kernel // 2) + 1, refinement_kernel // 2 + 1)


def check_size(shape_kji: Sequence[int], dims: int, minimum: int, spacing_mm: Sequence[float], name: str) -> None:
    """Raise ``InputVolumeError`` when a volume on the model's grid (axis-aligned, KJI = S, A, R)
    is too small for the automaton, saying the minimum per axis.

    The 2D model convolves the R and A axes (slices are axial; any number of slices from 2 on
    works, as the slice stack repeats edge slices); the 3D model all three.
    """
    axes = ("S", "A", "R")
    convolved = (1, 2) if dims == 2 else (0, 1, 2)
    small = [axis for axis in convolved if shape_kji[axis] < minimum]
    if not small:
        return
    size = " x ".join(str(n) for n in reversed(shape_kji))
    spacing = " x ".join(f"{s:g}" for s in spacing_mm)
    which = " and ".join(axes[axis] for axis in convolved)
    raise InputVolumeError(
        f"Input {name} is {size} voxels (R x A x S) on the model's {spacing} mm grid; Med-NCA needs at least "
        f"{minimum} voxels along {which}"
        + (" (and 2 slices along S)" if dims == 2 else "")
        + f", and {' and '.join(axes[axis] for axis in small)} {'has' if len(small) == 1 else 'have'} fewer. "
        "Give a larger volume, or a larger ROI box."
    )


def memory_estimate(voxels: int) -> float:
    """Expected memory (bytes) a crop-path run adds to the process, for a volume of ``voxels``
    on the larger of the input's and the model's grid (see :data:`BYTES_PER_VOXEL`)."""
    return WORKING_BYTES + BYTES_PER_VOXEL * voxels


def check_memory(voxels: int, name: str, available: int | None = None) -> None:
    """Raise ``InputVolumeError`` when a run on ``voxels`` voxels would need more memory than the
    system has available (``available`` bytes; default: :func:`available_memory_bytes`, and no
    check where the system does not say), naming the volume, the estimate and what to do."""
    available = available_memory_bytes() if available is None else available
    needed = memory_estimate(voxels)
    if available is None or needed <= available:
        return
    raise InputVolumeError(
        f"Input {name} has {voxels / 1e6:,.1f} million voxels: segmenting it needs about {format_bytes(needed)} "
        f"of memory and {format_bytes(available)} is available. Draw an ROI box around the hippocampus "
        "(or use whole-head mode, which segments two small boxes), or close other programs.")
