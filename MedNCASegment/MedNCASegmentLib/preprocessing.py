"""Intensity normalisation and padding shared by training and inference.

Both must see images the same way, so every transformation between a volume and the model's
input lives here and nowhere else.
"""

from __future__ import annotations

import numpy as np

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def normalize_intensity(image: np.ndarray) -> np.ndarray:
    """Scale an MRI to 0..1 between its 0.5th and 99.5th percentiles, robust to outlier voxels.

    MRI intensities have no absolute unit, so each volume is scaled by its own percentiles (the
    reference's z-score before clipping changes nothing after this rescaling).
    """
    values = np.asarray(image, dtype=np.float32)
    low, high = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if high <= low:
        return np.zeros_like(values)
    # One output array, scaled in place: no volume-sized temporaries beyond percentile's copy.
    scaled = np.subtract(values, np.float32(low), dtype=np.float32)
    scaled /= np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def pad_to_multiple(array: np.ndarray, multiple: int, axes: tuple[int, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad the given axes up to a multiple (the automaton's downscale factor).

    Returns the padded array and the slices that crop it back, so results map voxel for voxel
    onto the input. Padding is split evenly on both sides to keep the image centred.
    """
    pads = [(0, 0)] * array.ndim
    crop = [slice(None)] * array.ndim
    for axis in axes:
        size = array.shape[axis]
        extra = (-size) % multiple
        before = extra // 2
        pads[axis] = (before, extra - before)
        crop[axis] = slice(before, before + size)
    return np.pad(array, pads), tuple(crop)


def slice_stack(volume: np.ndarray, context: int) -> np.ndarray:
    """Turn a (D, H, W) volume into (D, 2*context+1, H, W): each slice with its neighbours.

    The 2D automaton segments slice by slice; giving it the adjacent slices as extra fixed
    input channels lets it see the third dimension at almost no cost. Edge slices repeat.
    """
    depth = volume.shape[0]
    offsets = range(-context, context + 1)
    indices = [np.clip(np.arange(depth) + offset, 0, depth - 1) for offset in offsets]
    return np.stack([volume[index] for index in indices], axis=1)
