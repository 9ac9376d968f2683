"""Writing model results into the scene as Slicer users expect them, and onto disk.

A label map becomes a segmentation node with one named, coloured segment per declared label
(also when the model found nothing for it, so the user sees "posterior: empty" rather than a
missing row), reference geometry of the input volume, a 3D surface, and a place beside the
input in the subject hierarchy. Probability and uncertainty maps become scalar volumes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import slicer
from vtkmodules.vtkCommonCore import vtkStringArray

from .geometry import VolumeGeometry
from .scene import forget_removed_nodes, segmentations_logic
from .volume_arrays import update_volume_from_array, voxel_view


@dataclass
class SegmentSpec:
    """One output segment: its name, RGB colour (0-1), value in label maps, and optionally a
    terminology entry string (Slicer's ``vtkSegment`` terminology tag format) and the range of
    volumes (mm^3) a plausible result has (the registry's ``plausibleVolumeMm3``)."""

    name: str
    color: tuple[float, float, float]
    label_value: int
    terminology: str | None = None
    plausible_mm3: tuple[float, float] | None = None


def write_labels_to_segmentation(
    scene,
    labels_kji: np.ndarray,
    geometry: VolumeGeometry,
    reference_volume,
    segments: Sequence[SegmentSpec],
    output=None,
    name: str | None = None,
    closed_surface: bool = True,
):
    """Put a label map (KJI, on ``geometry``) into a segmentation node and return the node.

    ``geometry`` becomes the segmentation's reference geometry, so the segments keep exactly
    the voxels given, also on a grid finer or coarser than ``reference_volume``'s.

    Every spec in ``segments`` becomes a segment, in order; label values not declared there
    are an error, since they would otherwise vanish silently. When ``output`` is given its
    segments are replaced, else a new node named ``name`` (default: after the reference
    volume) is added beside ``reference_volume`` in the subject hierarchy.

    ``closed_surface`` builds Slicer's closed surface representation, which the 3D view shows.
    Files saved from the node (``.seg.nrrd``) do not hold it, so headless batch runs skip it: on a
    large or fragmented result it costs seconds and hundreds of bytes per voxel.
    """
    labels = np.asarray(labels_kji)
    if labels.shape != geometry.shape_kji:
        raise ValueError(f"label map shape {labels.shape} does not match the geometry's {geometry.shape_kji}")
    consecutive = _to_consecutive_labels(labels, segments)

    if output is None:
        output = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", name or f"{reference_volume.GetName()} segmentation"
        )
        output.CreateDefaultDisplayNodes()
    elif name:
        output.SetName(name)
    segmentation = output.GetSegmentation()
    segmentation.RemoveAllSegments()
    segment_ids = vtkStringArray()  # position n holds the segment of consecutive label n + 1
    for spec in segments:
        segment_id = segmentation.AddEmptySegment("", spec.name, spec.color)
        if spec.terminology:
            segmentation.GetSegment(segment_id).SetTerminology(spec.terminology)
        segment_ids.InsertNextValue(segment_id)

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__EfficientSegmentation_import__")
    try:
        update_volume_from_array(labelmap, consecutive, geometry)
        # The segmentation lives on the grid its labels were computed on: the input volume's (then
        # it also refers to that volume, as Slicer's editor expects), or a finer or coarser one the
        # user asked for, which Slicer would otherwise resample away.
        on_input_grid = (reference_volume.GetImageData() is not None
                         and geometry.matches(VolumeGeometry.from_volume_node(reference_volume), atol=1e-6))
        output.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume if on_input_grid else labelmap)
        if not segmentations_logic(scene).ImportLabelmapToSegmentationNode(labelmap, output, segment_ids):
            raise RuntimeError(f"Slicer could not import the label map into segmentation '{output.GetName()}'.")
    finally:
        scene.RemoveNode(labelmap)

    if closed_surface:
        output.CreateClosedSurfaceRepresentation()
    _place_beside(scene, output, reference_volume)
    return output


def export_segmentation_labels(scene, seg_node, reference_volume, segments: Sequence[SegmentSpec]) -> np.ndarray:
    """Label map (KJI) of ``segments`` on the reference volume's grid, with their label values.

    The inverse of ``write_labels_to_segmentation``; used to check round trips and to write
    label maps for evaluation and batch use.
    """
    segmentation = seg_node.GetSegmentation()
    segment_ids = vtkStringArray()
    for spec in segments:
        segment_id = segmentation.GetSegmentIdBySegmentName(spec.name)
        if not segment_id:
            raise ValueError(f"Segmentation '{seg_node.GetName()}' has no segment named '{spec.name}'.")
        segment_ids.InsertNextValue(segment_id)
    # The export adds a label map, its display node and a colour table; all of them are removed
    # again, so that exporting leaves the scene as it was.
    ids_before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__EfficientSegmentation_export__")
    try:
        if not segmentations_logic(scene).ExportSegmentsToLabelmapNode(seg_node, segment_ids, labelmap, reference_volume):
            raise RuntimeError(f"Slicer could not export segmentation '{seg_node.GetName()}' to a label map.")
        consecutive = np.array(voxel_view(labelmap))
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in reversed([node for node in added if node.GetID() not in ids_before]):
            if scene.IsNodePresent(node):
                scene.RemoveNode(node)
    # The export numbers segments 1..N in the order given; map back to the declared values.
    to_declared = np.array([0] + [spec.label_value for spec in segments])
    return to_declared[consecutive]


def write_scalar_volume(scene, array_kji: np.ndarray, geometry: VolumeGeometry, name: str):
    """Add a scalar volume (e.g. a probability or uncertainty map) with the given voxels."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    update_volume_from_array(node, array_kji, geometry)
    node.CreateDefaultDisplayNodes()
    return node


def save_segmentation(node, path: str | os.PathLike) -> None:
    """Write a segmentation node to ``path`` (``.seg.nrrd``), raising ``OSError`` on failure."""
    storage = node.CreateDefaultStorageNode()
    storage.SetFileName(os.fspath(path))
    if not storage.WriteData(node):
        raise OSError(f"Could not write segmentation '{node.GetName()}' to '{os.fspath(path)}'.")


def save_labelmap(array_kji: np.ndarray, geometry: VolumeGeometry, path: str | os.PathLike) -> None:
    """Write a label map with its geometry to ``.nii.gz``/``.nrrd`` (format from the suffix).

    Uses a node outside any scene, so saving never changes the user's scene.
    """
    node = slicer.vtkMRMLLabelMapVolumeNode()
    update_volume_from_array(node, np.asarray(array_kji), geometry)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(os.fspath(path))
    if not storage.WriteData(node):
        raise OSError(f"Could not write label map to '{os.fspath(path)}'.")


def _to_consecutive_labels(labels: np.ndarray, segments: Sequence[SegmentSpec]) -> np.ndarray:
    """Relabel declared values to 1..N in spec order (0 stays background).

    ``ImportLabelmapToSegmentationNode`` maps label n to the n-th requested segment, so this
    is what ties each label value to its spec whatever the values are.
    """
    if not np.issubdtype(labels.dtype, np.integer):
        integral = np.rint(labels)
        if not np.array_equal(integral, labels):
            raise ValueError("label map has non-integer values; pass class labels, not probabilities")
        labels = integral.astype(np.int64)
    declared = [spec.label_value for spec in segments]
    if len(set(declared)) != len(declared) or min(declared, default=1) < 1:
        raise ValueError(f"segment label values must be distinct and positive, got {declared}")
    present = {int(v) for v in np.unique(labels)} - {0}
    undeclared = sorted(present - set(declared))
    if undeclared:
        raise ValueError(f"label map contains values {undeclared} that no segment declares")
    lookup = np.zeros(max(declared, default=0) + 1, dtype=np.uint16)
    lookup[declared] = np.arange(1, len(declared) + 1)
    return lookup[labels]


def _place_beside(scene, node, reference_node) -> None:
    """Give ``node`` the same subject hierarchy parent as ``reference_node`` (scene if none)."""
    forget_removed_nodes(scene)
    hierarchy = scene.GetSubjectHierarchyNode()
    reference_item = hierarchy.GetItemByDataNode(reference_node)
    parent = hierarchy.GetItemParent(reference_item) if reference_item else hierarchy.GetSceneItemID()
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:  # headless: no subject hierarchy plugins create items for new nodes
        hierarchy.CreateItem(parent, node)
