"""Results can be removed from a headless scene cleanly, and the next run does not trip over them."""

from __future__ import annotations

import vtk
from EfficientSegmentationCommon.scene import forget_removed_nodes, remove_node
from EfficientSegmentationCommon.segmentation_output import write_labels_to_segmentation, write_scalar_volume
from MedNCASegmentLib.logic import MedNCASegmentLogic


def hierarchy_items(scene) -> list[tuple[str, bool]]:
    """(name, has a data node) of every subject hierarchy item below the scene item."""
    hierarchy = scene.GetSubjectHierarchyNode()
    ids = vtk.vtkIdList()
    hierarchy.GetItemChildren(hierarchy.GetSceneItemID(), ids, True)
    return [(hierarchy.GetItemName(ids.GetId(i)), hierarchy.GetItemDataNode(ids.GetId(i)) is not None)
            for i in range(ids.GetNumberOfIds())]


def test_remove_node_takes_everything_of_a_result_away(scene, hippocampus):
    """A result as the logic writes it: a segmentation (with its closed surface) and an uncertainty volume."""
    segments = MedNCASegmentLogic(scene).model_entry(None).segments
    nodes_before = scene.GetNumberOfNodes()
    segmentation = write_labels_to_segmentation(scene, hippocampus.labels, hippocampus.geometry, hippocampus.volume,
                                                 segments, name="result")
    uncertainty = write_scalar_volume(scene, hippocampus.image, hippocampus.geometry, "uncertainty")
    assert scene.GetNumberOfNodes() > nodes_before + 2  # display nodes came with them
    remove_node(scene, segmentation)
    remove_node(scene, uncertainty)
    remove_node(scene, uncertainty)  # already gone: nothing happens
    assert scene.GetNumberOfNodes() == nodes_before
    assert hierarchy_items(scene) == []


def test_plain_remove_node_leaves_no_stale_hierarchy_item(scene, hippocampus, capfd):
    segments = MedNCASegmentLogic(scene).model_entry(None).segments
    for index in range(3):  # the stale item of a removed result used to break the result after next
        result = write_labels_to_segmentation(scene, hippocampus.labels, hippocampus.geometry, hippocampus.volume,
                                              segments, name=f"result {index}")
        scene.RemoveNode(result)
        assert len(hierarchy_items(scene)) == 1  # the removed result's, forgotten when the next one is placed
    assert "DataNodeCache inconsistency" not in capfd.readouterr().err


def test_folders_stay_when_stale_items_are_forgotten(scene, hippocampus):
    hierarchy = scene.GetSubjectHierarchyNode()
    folder = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "study folder")
    segments = MedNCASegmentLogic(scene).model_entry(None).segments
    result = write_labels_to_segmentation(scene, hippocampus.labels, hippocampus.geometry, hippocampus.volume,
                                          segments, name="result")
    scene.RemoveNode(result)
    assert forget_removed_nodes(scene) == 1
    assert hierarchy_items(scene) == [("study folder", False)]
    assert hierarchy.GetItemName(folder) == "study folder"
