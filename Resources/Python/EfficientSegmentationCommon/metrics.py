"""Overlap and boundary-distance metrics, as reported in segmentation papers.

Dice says how much two masks overlap; HD95 says how far apart their boundaries get (in mm,
ignoring the worst 5% of boundary points), which catches the stray blobs Dice hides. Both are
used by the tests, the training scripts and the benchmarks, so they live in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; 1.0 when both are empty (nothing to find, none found)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def hd95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile symmetric Hausdorff distance (mm) between the surfaces of two masks.

    The masks are KJI arrays; ``spacing`` is in I, J, K order like ``VolumeGeometry.spacing``.
    Returns 0.0 when both masks are empty and ``inf`` when only one is.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    sampling = tuple(reversed([float(s) for s in spacing]))
    surface_a = _surface(a)
    surface_b = _surface(b)
    # Distance of every voxel to the nearest surface voxel of the other mask.
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=sampling)
    distances = np.concatenate([to_b[surface_a], to_a[surface_b]])
    return float(np.percentile(distances, 95))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` that touch the background (6-connectivity)."""
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
