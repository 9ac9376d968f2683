"""Resampling arrays between voxel grids, in physical space.

Models are trained at one spacing; user volumes come at any spacing and orientation. Each
target voxel centre is mapped through target IJK -> RAS -> source IJK, so spacing, origin
and direction (oblique included) are all honoured, and the way back lands on the user's grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .geometry import VolumeGeometry


def resample(
    array_kji: np.ndarray,
    source: VolumeGeometry,
    target: VolumeGeometry,
    order: int = 1,
    fill: float = 0.0,
) -> np.ndarray:
    """Values of ``array_kji`` (on ``source``) at the voxel centres of ``target``.

    ``order`` is the spline order: 0 (nearest) for labels, 1 (linear) for images. Beyond the
    source grid values fade into ``fill`` over one voxel (order 1) or half a voxel (order 0),
    so voxel centres that a rounding error puts just outside an edge keep their value.
    The result is float32 for order > 0 and keeps the input dtype for order 0.
    """
    array = np.asarray(array_kji)
    if array.shape != source.shape_kji:
        raise ValueError(f"array shape {array.shape} does not match the source geometry's {source.shape_kji}")
    # Homogeneous map from target IJK to source IJK, then both sides reordered to KJI.
    target_to_source_ijk = np.linalg.inv(source.ijk_to_ras) @ target.ijk_to_ras
    reverse = np.eye(4)[[2, 1, 0, 3]]
    target_to_source_kji = reverse @ target_to_source_ijk @ reverse
    input_array = array if order == 0 else array.astype(np.float32, copy=False)
    return ndimage.affine_transform(
        input_array,
        target_to_source_kji,
        output_shape=target.shape_kji,
        order=order,
        mode="grid-constant",
        cval=fill,
    )


def resample_labels(
    labels_kji: np.ndarray,
    source: VolumeGeometry,
    target: VolumeGeometry,
    label_values: Sequence[int] | None = None,
) -> np.ndarray:
    """Label map resampled to ``target`` by interpolating each label's mask, then arg-max.

    Nearest neighbour makes staircase boundaries and loses thin parts on a round trip to a
    coarser or finer grid; linear interpolation of per-label masks keeps the boundaries
    where they were. ``label_values`` are the foreground labels (default: those present);
    background 0 wins ties and fills the area outside the source grid.
    """
    labels = np.asarray(labels_kji)
    values = [int(v) for v in (np.unique(labels) if label_values is None else label_values) if v != 0]
    best_value = np.zeros(target.shape_kji, dtype=labels.dtype)
    best_score = resample((labels == 0).astype(np.float32), source, target, order=1, fill=1.0)
    for value in values:
        score = resample((labels == value).astype(np.float32), source, target, order=1, fill=0.0)
        wins = score > best_score
        best_value[wins] = value
        best_score[wins] = score[wins]
    return best_value
