"""Moving voxels between volume nodes and numpy arrays (KJI order), with input validation.

Models get float32 copies, never views into the node's image data: a model that normalises
in place must not change what the user sees. Inputs are checked up front, so the user gets
one clear sentence ("... is an RGB volume") instead of a shape error deep inside a network.
"""

from __future__ import annotations

import numpy as np
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkImageData

from .errors import InputVolumeError, describe_node
from .geometry import VolumeGeometry


def check_scalar_volume(node) -> None:
    """Raise ``InputVolumeError`` unless ``node`` is a 3D, single-component, finite volume.

    The message names the node and the problem, and says what to do where there is a fix.
    """
    if node is None:
        raise InputVolumeError("No input volume: select a scalar volume to segment.")
    name = describe_node(node)
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputVolumeError(f"Input {name} is a {node.GetClassName()}, not a scalar volume.")
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputVolumeError(f"Input volume {name} has no image data: load or compute its voxels first.")
    components = image.GetNumberOfScalarComponents()
    if components > 1 or node.IsA("vtkMRMLVectorVolumeNode"):
        raise InputVolumeError(
            f"Input volume {name} is a vector or RGB volume ({components} components per voxel); "
            "the models need a single-component (grayscale) volume, e.g. from 'Vector to Scalar Volume'."
        )
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise InputVolumeError(
            f"Input volume {name} is a single slice ({dims[0]} x {dims[1]} x {dims[2]} voxels); "
            "the models segment 3D volumes."
        )
    voxels = voxel_view(node)
    if np.issubdtype(voxels.dtype, np.floating):
        nan_count = int(np.count_nonzero(np.isnan(voxels)))
        inf_count = int(np.count_nonzero(np.isinf(voxels)))
        if nan_count or inf_count:
            raise InputVolumeError(
                f"Input volume {name} contains {nan_count} NaN and {inf_count} infinite voxels; "
                "replace them with finite values before segmenting."
            )


def array_from_volume(node) -> tuple[np.ndarray, VolumeGeometry]:
    """A float32 copy of a valid scalar volume's voxels (KJI order) and its geometry."""
    check_scalar_volume(node)
    return voxel_view(node).astype(np.float32, copy=True), VolumeGeometry.from_volume_node(node)


def update_volume_from_array(node, array_kji: np.ndarray, geometry: VolumeGeometry) -> None:
    """Replace ``node``'s voxels with a deep copy of ``array_kji`` and set its geometry."""
    array = np.ascontiguousarray(array_kji)
    if array.shape != geometry.shape_kji:
        raise ValueError(f"array shape {array.shape} does not match the geometry's {geometry.shape_kji}")
    image = vtkImageData()
    image.SetDimensions(*geometry.shape_ijk)
    image.GetPointData().SetScalars(numpy_to_vtk(array.reshape(-1), deep=True))
    node.SetAndObserveImageData(image)
    geometry.apply_to_volume_node(node)


def voxel_view(node) -> np.ndarray:
    """Read-only view of a single-component volume's voxels, KJI order, without copying.

    For reading only (checks, exports of temporary nodes); models get ``array_from_volume``.
    """
    image = node.GetImageData()
    view = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(tuple(reversed(image.GetDimensions())))
    view.flags.writeable = False
    return view
