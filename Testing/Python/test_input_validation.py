"""Bad inputs are refused up front, with a message that names the volume and the problem."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from conftest import hippocampus_paths
from EfficientSegmentationCommon.errors import InputVolumeError
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.scene import load_volume
from EfficientSegmentationCommon.segmentation_output import write_scalar_volume
from EfficientSegmentationCommon.volume_arrays import (
    array_from_volume,
    check_scalar_volume,
)
from vtkmodules.util.numpy_support import numpy_to_vtk
from vtkmodules.vtkCommonDataModel import vtkImageData


@pytest.mark.parametrize("node_class", ["vtkMRMLVectorVolumeNode", "vtkMRMLScalarVolumeNode"])
def test_rgb_volume_is_refused(scene, hippocampus, node_class):
    rgb = np.stack([hippocampus.image, hippocampus.image / 2, hippocampus.image / 3], axis=-1).astype(np.uint8)
    image = vtkImageData()
    image.SetDimensions(*hippocampus.geometry.shape_ijk)
    image.GetPointData().SetScalars(numpy_to_vtk(rgb.reshape(-1, 3), deep=True))
    node = scene.AddNewNodeByClass(node_class, "colour photo")
    node.SetAndObserveImageData(image)
    hippocampus.geometry.apply_to_volume_node(node)
    with pytest.raises(InputVolumeError, match=r"'colour photo' is a vector or RGB volume \(3 components"):
        check_scalar_volume(node)


def test_single_slice_is_refused(scene, hippocampus):
    k = hippocampus.geometry.shape_kji[0] // 2
    one_slice = VolumeGeometry(hippocampus.geometry.ijk_to_ras, (1, *hippocampus.geometry.shape_kji[1:]))
    node = write_scalar_volume(scene, hippocampus.image[k : k + 1], one_slice, "middle slice")
    with pytest.raises(InputVolumeError, match=r"'middle slice' is a single slice \(35 x 51 x 1 voxels\)"):
        check_scalar_volume(node)


def test_volume_without_image_data_is_refused(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "placeholder")
    with pytest.raises(InputVolumeError, match="'placeholder' has no image data"):
        check_scalar_volume(node)


def test_missing_node_is_refused():
    with pytest.raises(InputVolumeError, match="No input volume"):
        check_scalar_volume(None)


def test_non_finite_voxels_are_refused(scene, hippocampus):
    image = hippocampus.image.copy()
    image[0, 0, :2] = np.nan
    image[1, 1, :3] = np.inf
    image[2, 2, 0] = -np.inf
    node = write_scalar_volume(scene, image, hippocampus.geometry, "damaged scan")
    with pytest.raises(InputVolumeError, match="'damaged scan' contains 2 NaN and 4 infinite voxels"):
        check_scalar_volume(node)


def test_unreadable_file_is_refused_and_adds_nothing(scene, tmp_path):
    real_image, _ = hippocampus_paths("hippocampus_001")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(gzip.compress(gzip.decompress(real_image.read_bytes())[:200]))  # truncated NIfTI
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputVolumeError, match=r"'broken\.nii\.gz' is unreadable: its NIfTI header is damaged"):
        load_volume(scene, broken)
    assert scene.GetNumberOfNodes() == count


def test_missing_file_is_refused(scene, tmp_path):
    with pytest.raises(InputVolumeError, match=r"absent\.nrrd': no such file"):
        load_volume(scene, tmp_path / "absent.nrrd")


def test_array_is_a_float32_copy_that_cannot_change_the_input(hippocampus):
    array, geometry = array_from_volume(hippocampus.volume)
    assert array.dtype == np.float32 and geometry == hippocampus.geometry
    array[:] = -1.0
    assert np.array_equal(array_from_volume(hippocampus.volume)[0], hippocampus.image)
