"""Choosing the grids a model works on: a region of interest of the input, and the model's own grid.

A whole-brain scan can be segmented around one structure by cropping to a markups ROI first;
the result is pasted back into the full input grid. Models are trained on volumes of a fixed
orientation and spacing (for example RAS-aligned, 1 mm), so the input is brought onto an
axis-aligned grid of that orientation and spacing that covers it, whatever its direction matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InputVolumeError, describe_node
from .geometry import VolumeGeometry

KJISlices = tuple[slice, slice, slice]


def roi_corners_ras(roi_node) -> np.ndarray:
    """The eight corners (8, 3) of a ``vtkMRMLMarkupsROINode`` box in RAS, its rotation included."""
    # The ROI's object coordinates have their origin at the box centre; ObjectToWorld holds the
    # box's rotation and its centre (parent transforms included).
    size = np.asarray(roi_node.GetSize(), dtype=float)
    matrix = roi_node.GetObjectToWorldMatrix()
    object_to_world = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    signs = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    corners = signs * size
    return corners @ object_to_world[:3, :3].T + object_to_world[:3, 3]


def crop_to_roi(geometry: VolumeGeometry, roi_node) -> tuple[KJISlices, VolumeGeometry]:
    """The voxel box of ``geometry`` covering the ROI, and the geometry of that box.

    Raises ``InputVolumeError`` when the ROI misses the volume or covers less than 2 voxels
    along an axis (nothing 3D left to segment).
    """
    return crop_to_corners(geometry, roi_corners_ras(roi_node), f"ROI {describe_node(roi_node)}")


def crop_to_corners(geometry: VolumeGeometry, corners_ras: np.ndarray, name: str) -> tuple[KJISlices, VolumeGeometry]:
    """The voxel box of ``geometry`` covering the points ``corners_ras`` (n, 3; a box's corners),
    and the geometry of that box; ``name`` names the box in the error raised when it misses the
    volume or covers less than 2 voxels along an axis (``InputVolumeError``)."""
    corners_ijk = geometry.ras_to_voxel(corners_ras)
    low = np.maximum(np.floor(corners_ijk.min(axis=0) + 0.5), 0).astype(int)
    high = np.minimum(np.ceil(corners_ijk.max(axis=0) + 0.5), geometry.shape_ijk).astype(int)
    if np.any(high - low < 2):
        raise InputVolumeError(f"{name[:1].upper()}{name[1:]} does not overlap the input volume "
                               "(or covers less than 2 voxels along an axis); move or enlarge it.")
    slices_kji = tuple(slice(int(a), int(b)) for a, b in zip(low[::-1], high[::-1], strict=True))
    matrix = geometry.ijk_to_ras.copy()
    matrix[:3, 3] = geometry.voxel_to_ras(low)
    return slices_kji, VolumeGeometry(matrix, tuple(int(b - a) for a, b in zip(low[::-1], high[::-1], strict=True)))


# Where each voxel axis (I, J, K) points in an orientation code such as "LPS" (the DICOM / ITK
# reading: I towards the first letter, J the second, K the third), as signs along R, A, S.
_AXIS_SIGNS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def orientation_direction(orientation: str) -> np.ndarray:
    """The 3x3 direction matrix (columns: unit I, J, K axes in RAS) of an orientation code whose
    axes are the patient axes in R, A, S order with any flips: "RAS" (identity), "LPS" (DICOM,
    ITK: diag(-1, -1, 1)), "LAS", ...

    Raises ValueError for a code that is not three of R/L, A/P, S/I in that order.
    """
    code = orientation.upper()
    if len(code) != 3 or any(_AXIS_SIGNS.get(letter, (None,))[0] != axis for axis, letter in enumerate(code)):
        raise ValueError(f"orientation {orientation!r} must name the I, J, K axes as R or L, A or P, S or I, "
                         "in that order (for example RAS or LPS)")
    return np.diag([_AXIS_SIGNS[letter][1] for letter in code])


def is_axial(geometry: VolumeGeometry, tolerance: float = 1e-3) -> bool:
    """True when the I, J, K axes are the patient axes R, A, S in any order, each possibly
    flipped (so its voxels lie on an axis-aligned lattice: no interpolation is needed); False
    for an oblique grid."""
    closest = np.round(np.abs(geometry.direction))
    return bool(np.allclose(np.abs(geometry.direction), closest, atol=tolerance)
                and np.array_equal(np.sort(np.argmax(closest, axis=0)), [0, 1, 2]))


def axis_aligned_grid(geometry: VolumeGeometry, spacing: Sequence[float], orientation: str = "RAS") -> VolumeGeometry:
    """A grid of ``spacing`` mm (I, J, K) covering the whole of ``geometry``, whose axes are the
    patient axes with the directions of ``orientation`` (:func:`orientation_direction`; default
    RAS, the identity direction).

    A model reads arrays in its training data's voxel order, so an input is brought onto the
    grid of that orientation. For an input that already has this orientation and spacing it is
    the input grid itself (to rounding), and for any input whose voxel centres it shares (the
    same lattice stored in another axis order or direction) ``resampling.resample`` re-indexes
    the voxels instead of interpolating.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    direction = orientation_direction(orientation)
    low, high = geometry.bounds_ras()
    size = np.maximum(1, np.round((high - low) / spacing - 1e-6)).astype(int)
    origin = (low + high) / 2 - direction @ (spacing * (size - 1) / 2)
    return VolumeGeometry.compose(tuple(size[::-1].tolist()), spacing, origin, direction)


def paste(crop: np.ndarray, slices_kji: KJISlices, full_shape_kji: Sequence[int], fill: float = 0) -> np.ndarray:
    """Place a cropped result back into an array of the full input's shape."""
    full = np.full(tuple(full_shape_kji), fill, dtype=crop.dtype)
    full[slices_kji] = crop
    return full
