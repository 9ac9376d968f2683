"""Label map -> segmentation node -> label map, on a real volume and on an oblique copy of it.

The copy has a rotated direction matrix, anisotropic spacing and an origin far from zero, the
cases where a wrong axis order or a forgotten direction matrix shows up. The segmentation must
give back the input voxel for voxel and lie exactly on the volume in RAS.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
from conftest import load_case
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.labels2seg import hippocampus_segments
from EfficientSegmentationCommon.scene import load_volume
from EfficientSegmentationCommon.segmentation_output import (
    export_segmentation_labels,
    save_labelmap,
    save_segmentation,
    write_labels_to_segmentation,
    write_scalar_volume,
)
from EfficientSegmentationCommon.volume_arrays import array_from_volume
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkPolyData
from vtkmodules.vtkCommonMath import vtkMatrix4x4

HIPPOCAMPUS_SEGMENTS = hippocampus_segments()  # names and colours from the registry


def rotation(axis, degrees: float) -> np.ndarray:
    """Rotation matrix about ``axis`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    angle = np.radians(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def oblique_geometry(shape_kji) -> VolumeGeometry:
    return VolumeGeometry.compose(
        shape_kji,
        spacing=(0.8, 1.3, 2.1),
        origin=(-37.5, 12.25, 101.0),
        direction=rotation((1, 1, 0), 30) @ rotation((0, 0, 1), -20),
    )


@pytest.fixture(params=["as loaded", "oblique anisotropic offset copy"])
def case(request, scene):
    """The real hippocampus_001 volume, or a copy of its voxels on an oblique grid."""
    loaded = load_case(scene, "hippocampus_001")
    if request.param == "oblique anisotropic offset copy":
        geometry = oblique_geometry(loaded.geometry.shape_kji)
        loaded.volume = write_scalar_volume(scene, loaded.image, geometry, "oblique copy")
        loaded.geometry = geometry
    return loaded


def test_exported_labels_equal_input_voxel_for_voxel(scene, case):
    segmentation = write_labels_to_segmentation(scene, case.labels, case.geometry, case.volume, HIPPOCAMPUS_SEGMENTS)
    exported = export_segmentation_labels(scene, segmentation, case.volume, HIPPOCAMPUS_SEGMENTS)
    assert exported.shape == case.labels.shape
    assert np.array_equal(exported, case.labels)
    assert set(np.unique(case.labels)) == {0, 1, 2}  # both labels were really exercised


def test_segmentation_lies_on_the_volume_in_ras(scene, case):
    segmentation = write_labels_to_segmentation(scene, case.labels, case.geometry, case.volume, HIPPOCAMPUS_SEGMENTS)
    for spec in HIPPOCAMPUS_SEGMENTS:
        segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName(spec.name)
        labelmap = slicer.vtkOrientedImageData()
        segmentation.GetBinaryLabelmapRepresentation(segment_id, labelmap)
        image_to_world = vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(image_to_world)
        matrix = np.array([[image_to_world.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(matrix, case.geometry.ijk_to_ras, atol=1e-6)

        # Every voxel of the label, taken to RAS and back into the segment's own labelmap, is set.
        voxels_ijk = np.argwhere(case.labels == spec.label_value)[:, ::-1]
        world_to_image = np.linalg.inv(matrix)
        ras = case.geometry.voxel_to_ras(voxels_ijk)
        back = np.rint(ras @ world_to_image[:3, :3].T + world_to_image[:3, 3]).astype(int)
        np.testing.assert_array_equal(back, voxels_ijk)
        assert all(labelmap.GetScalarComponentAsDouble(*map(int, ijk), 0) for ijk in back)

        # The 3D surface sits where the labelled voxels are (centroid within one voxel).
        surface = vtkPolyData()
        segmentation.GetClosedSurfaceRepresentation(segment_id, surface)
        surface_points = vtk_to_numpy(surface.GetPoints().GetData())
        distance = np.linalg.norm(surface_points.mean(axis=0) - ras.mean(axis=0))
        assert distance < min(case.geometry.spacing)


def test_saved_seg_nrrd_reads_back_identical(scene, case, tmp_path):
    segmentation = write_labels_to_segmentation(scene, case.labels, case.geometry, case.volume, HIPPOCAMPUS_SEGMENTS)
    path = tmp_path / "case.seg.nrrd"
    save_segmentation(segmentation, path)

    reloaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reloaded")
    storage = reloaded.CreateDefaultStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(reloaded)
    names = [reloaded.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]
    assert names == [spec.name for spec in HIPPOCAMPUS_SEGMENTS]
    exported = export_segmentation_labels(scene, reloaded, case.volume, HIPPOCAMPUS_SEGMENTS)
    assert np.array_equal(exported, case.labels)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_saved_labelmap_reads_back_with_geometry(scene, case, tmp_path, suffix):
    path = tmp_path / f"labels{suffix}"
    save_labelmap(case.labels, case.geometry, path)
    reloaded, geometry = array_from_volume(load_volume(scene, path))
    assert np.array_equal(reloaded, case.labels)
    assert geometry.shape_kji == case.geometry.shape_kji
    np.testing.assert_allclose(geometry.ijk_to_ras, case.geometry.ijk_to_ras, atol=1e-4)
