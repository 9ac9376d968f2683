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
    target_to_source_kji = _target_to_source_kji(source, target)
    input_array = array if order == 0 else array.astype(np.float32, copy=False)
    voxels = _voxel_reindexing(target_to_source_kji, array.shape, target.shape_kji)
    if voxels is not None:  # the same voxel centres in another axis order or direction: no interpolation
        axes, index = voxels
        return np.ascontiguousarray(input_array.transpose(axes)[index])
    return ndimage.affine_transform(
        input_array,
        target_to_source_kji,
        output_shape=target.shape_kji,
        order=order,
        mode="grid-constant",
        cval=fill,
    )


def same_voxel_centres(source: VolumeGeometry, target: VolumeGeometry) -> bool:
    """Whether every voxel centre of ``target`` is one of ``source``'s (axes swapped or reversed,
    the target inside the source), so that ``resample`` only reorders voxels, without
    interpolating: a user is told their scan was resampled only when it was."""
    return _voxel_reindexing(_target_to_source_kji(source, target), source.shape_kji, target.shape_kji) is not None


def _target_to_source_kji(source: VolumeGeometry, target: VolumeGeometry) -> np.ndarray:
    """Homogeneous map (4 x 4) from target KJI voxel indices to source KJI voxel indices."""
    target_to_source_ijk = np.linalg.inv(source.ijk_to_ras) @ target.ijk_to_ras
    reverse = np.eye(4)[[2, 1, 0, 3]]
    return reverse @ target_to_source_ijk @ reverse


def _voxel_reindexing(target_to_source_kji: np.ndarray, source_shape: Sequence[int], target_shape: Sequence[int],
                      atol: float = 1e-6) -> tuple[tuple[int, int, int], tuple[slice, slice, slice]] | None:
    """When every target voxel centre is a source voxel centre (axes swapped or reversed, the
    target inside the source), the source axes in target order and the slices that pick the
    target's voxels from the transposed source; else None.

    This is the common case of an input stored in another orientation than the model's grid at
    the same spacing (DICOM's LPS against RAS): interpolating there returns the voxels
    unchanged, only slower (about 1 s per 240 x 240 x 155 volume).
    """
    linear, offset = target_to_source_kji[:3, :3], target_to_source_kji[:3, 3]
    rounded = np.round(linear)
    if not np.allclose(linear, rounded, atol=atol) or not np.allclose(offset, np.round(offset), atol=atol):
        return None
    if sorted(np.abs(rounded).sum(axis=0).tolist()) != [1, 1, 1] or sorted(np.abs(rounded).sum(axis=1).tolist()) != [1, 1, 1]:
        return None  # not a signed permutation (scaled or sheared)
    axes, index = [], []
    for target_axis in range(3):
        source_axis = int(np.argmax(np.abs(rounded[:, target_axis])))
        sign, start = int(rounded[source_axis, target_axis]), int(np.round(offset[source_axis]))
        stop = start + sign * (target_shape[target_axis] - 1)
        if min(start, stop) < 0 or max(start, stop) > source_shape[source_axis] - 1:
            return None  # the target reaches outside the source: leave the fill to interpolation
        axes.append(source_axis)
        index.append(slice(start, stop + 1, 1) if sign > 0 else slice(start, stop - 1 if stop > 0 else None, -1))
    return tuple(axes), tuple(index)


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
