"""The smallest volume Med-NCA can segment, said before the automaton fails on it.

The automaton's convolutions pad by reflection, which needs more cells along an axis than the
padding (``torch.nn.functional.pad``, mode "reflect"). The global stage works on the image
zero-padded to a multiple of the downscale factor and averaged down by it, so an axis of n
voxels has ceil(n / downscale) cells there; the refinement stage works on all n voxels. A
volume 2 voxels thick otherwise ends in a raw torch padding error.
"""

from __future__ import annotations

from collections.abc import Sequence

from EfficientSegmentationCommon.errors import InputVolumeError


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
