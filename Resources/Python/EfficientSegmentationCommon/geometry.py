"""Voxel grid geometry: where each voxel of a KJI-ordered array lies in patient (RAS) space.

A model runs on its own grid (fixed spacing, sometimes a fixed size) and its output has to
land back exactly on the user's volume, which may be oblique, anisotropic and anywhere in
space. Keeping the geometry as one 4x4 IJK-to-RAS matrix plus the array shape, the same
representation MRML uses, makes those round trips exact and easy to check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from vtkmodules.vtkCommonMath import vtkMatrix4x4

from .errors import InputVolumeError, describe_node


@dataclass(frozen=True, eq=False)
class VolumeGeometry:
    """Geometry of a voxel grid.

    ``ijk_to_ras`` maps homogeneous voxel indices (i, j, k, 1) to RAS millimetres, as
    ``vtkMRMLVolumeNode.GetIJKToRASMatrix`` does. ``shape_kji`` is the numpy shape of the
    arrays on this grid, in Slicer's KJI order (slowest axis first).
    """

    ijk_to_ras: np.ndarray
    shape_kji: tuple[int, int, int]

    def __post_init__(self) -> None:
        matrix = np.array(self.ijk_to_ras, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise ValueError(f"ijk_to_ras must be 4x4, got shape {matrix.shape}")
        if not np.allclose(matrix[3], (0, 0, 0, 1)):
            raise ValueError("ijk_to_ras must be affine (last row 0 0 0 1)")
        if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
            raise ValueError("ijk_to_ras is singular")
        shape = tuple(int(n) for n in self.shape_kji)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape_kji must be three positive sizes, got {self.shape_kji}")
        matrix.flags.writeable = False  # frozen means frozen, also for the matrix
        object.__setattr__(self, "ijk_to_ras", matrix)
        object.__setattr__(self, "shape_kji", shape)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VolumeGeometry):
            return NotImplemented
        return self.shape_kji == other.shape_kji and np.array_equal(self.ijk_to_ras, other.ijk_to_ras)

    @classmethod
    def compose(
        cls,
        shape_kji: Sequence[int],
        spacing: Sequence[float],
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        direction: np.ndarray | None = None,
    ) -> VolumeGeometry:
        """Build a geometry from spacing (i, j, k mm), origin (RAS of voxel 0) and a 3x3
        direction matrix whose columns are the unit I, J, K axes in RAS (identity if None)."""
        axes = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
        matrix = np.eye(4)
        matrix[:3, :3] = axes * np.asarray(spacing, dtype=np.float64)[np.newaxis, :]
        matrix[:3, 3] = origin
        return cls(matrix, tuple(shape_kji))

    @classmethod
    def from_volume_node(cls, node) -> VolumeGeometry:
        """Geometry of a ``vtkMRMLVolumeNode`` (its parent transforms are not applied)."""
        image = node.GetImageData() if node is not None else None
        if image is None:
            raise InputVolumeError(f"Volume {describe_node(node)} has no image data, so it has no voxel grid.")
        vtk_matrix = vtkMatrix4x4()
        node.GetIJKToRASMatrix(vtk_matrix)
        matrix = np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        dims_ijk = image.GetDimensions()
        return cls(matrix, tuple(reversed(dims_ijk)))

    def apply_to_volume_node(self, node) -> None:
        """Give ``node`` this grid's IJK-to-RAS matrix (origin, spacing and directions).

        The image data's own origin and spacing are left to MRML's convention (0 and 1),
        because MRML keeps the geometry on the node.
        """
        vtk_matrix = vtkMatrix4x4()
        for row in range(4):
            for column in range(4):
                vtk_matrix.SetElement(row, column, float(self.ijk_to_ras[row, column]))
        node.SetIJKToRASMatrix(vtk_matrix)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along I, J, K in mm (note: the reverse of the array axis order)."""
        return tuple(float(s) for s in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0))

    @property
    def origin(self) -> tuple[float, float, float]:
        """RAS position (mm) of the centre of voxel (0, 0, 0)."""
        return tuple(float(x) for x in self.ijk_to_ras[:3, 3])

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit I, J, K axes in RAS."""
        return self.ijk_to_ras[:3, :3] / np.asarray(self.spacing)[np.newaxis, :]

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Grid size along I, J, K (VTK's dimensions order)."""
        return tuple(reversed(self.shape_kji))

    def with_spacing(self, spacing_ijk: Sequence[float]) -> VolumeGeometry:
        """A grid over the same physical box and with the same directions, at a new spacing.

        The new size is the old extent divided by the new spacing, rounded (at least 1), and
        the new grid is centred on the old one, so resampling there and back is symmetric.
        This is how volumes are brought to a model's training resolution.
        """
        old_spacing = np.asarray(self.spacing)
        new_spacing = np.asarray(spacing_ijk, dtype=np.float64)
        if new_spacing.shape != (3,) or np.any(new_spacing <= 0):
            raise ValueError(f"spacing must be three positive values, got {spacing_ijk}")
        old_size = np.asarray(self.shape_ijk, dtype=np.float64)
        new_size = np.maximum(1, np.round(old_size * old_spacing / new_spacing)).astype(int)
        centre = self.voxel_to_ras((old_size - 1) / 2)
        origin = centre - self.direction @ (new_spacing * (new_size - 1) / 2)
        return VolumeGeometry.compose(tuple(reversed(new_size.tolist())), new_spacing, origin, self.direction)

    def bounds_ras(self) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest RAS corner (mm) of the box the voxels tile (half a voxel beyond the
        outer voxel centres), whatever the directions."""
        edges = np.array([[x, y, z] for x in (-0.5, self.shape_ijk[0] - 0.5) for y in (-0.5, self.shape_ijk[1] - 0.5)
                          for z in (-0.5, self.shape_ijk[2] - 0.5)])
        corners = self.voxel_to_ras(edges)
        return corners.min(axis=0), corners.max(axis=0)

    def matches(self, other: VolumeGeometry, atol: float) -> bool:
        """Same shape and IJK-to-RAS matrices equal within ``atol`` (``==`` is exact)."""
        return self.shape_kji == other.shape_kji and bool(np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=atol))

    def voxel_to_ras(self, ijk: np.ndarray | Sequence[float]) -> np.ndarray:
        """RAS positions of voxel coordinates ``ijk`` (shape (..., 3), I first)."""
        points = np.asarray(ijk, dtype=np.float64)
        return points @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def ras_to_voxel(self, ras: np.ndarray | Sequence[float]) -> np.ndarray:
        """Continuous voxel coordinates (I first) of RAS positions ``ras`` (shape (..., 3))."""
        ras_to_ijk = np.linalg.inv(self.ijk_to_ras)
        points = np.asarray(ras, dtype=np.float64)
        return points @ ras_to_ijk[:3, :3].T + ras_to_ijk[:3, 3]

