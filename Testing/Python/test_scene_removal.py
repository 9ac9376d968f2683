"""Results can be removed from a headless scene cleanly, and the next run does not trip over them."""

from __future__ import annotations

import vtk
from EfficientSegmentationCommon.scene import forget_removed_nodes, remove_node
from MedNCASegmentLib.logic import MedNCASegmentLogic


def hierarchy_items(scene) -> list[tuple[str, bool]]:
    """(name, has a data node) of every subject hierarchy item below the scene item."""
    hierarchy = scene.GetSubjectHierarchyNode()
    ids = vtk.vtkIdList()
    hierarchy.GetItemChildren(hierarchy.GetSceneItemID(), ids, True)
    return [(hierarchy.GetItemName(ids.GetId(i)), hierarchy.GetItemDataNode(ids.GetId(i)) is not None)
            for i in range(ids.GetNumberOfIds())]


def test_remove_node_takes_everything_of_a_result_away(scene, hippocampus):
    logic = MedNCASegmentLogic(scene)
    nodes_before = scene.GetNumberOfNodes()
    result = logic.segment(hippocampus.volume, runs=1, uncertaintyVolume=True)
    assert scene.GetNumberOfNodes() > nodes_before
    remove_node(scene, result.segmentation)
    remove_node(scene, result.uncertainty)
    remove_node(scene, result.uncertainty)  # already gone: nothing happens
    assert scene.GetNumberOfNodes() == nodes_before
    assert hierarchy_items(scene) == []


def test_plain_remove_node_leaves_no_stale_hierarchy_item(scene, hippocampus, capfd):
    logic = MedNCASegmentLogic(scene)
    for _ in range(3):  # the stale item of a removed result used to break the run after next
        result = logic.segment(hippocampus.volume, runs=1)
        scene.RemoveNode(result.segmentation)
        assert len(hierarchy_items(scene)) == 1  # the removed result's, forgotten when the next one is placed
    assert "DataNodeCache inconsistency" not in capfd.readouterr().err


def test_folders_stay_when_stale_items_are_forgotten(scene, hippocampus):
    hierarchy = scene.GetSubjectHierarchyNode()
    folder = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "study folder")
    result = MedNCASegmentLogic(scene).segment(hippocampus.volume, runs=1)
    scene.RemoveNode(result.segmentation)
    assert forget_removed_nodes(scene) == 1
    assert hierarchy_items(scene) == [("study folder", False)]
    assert hierarchy.GetItemName(folder) == "study folder"
