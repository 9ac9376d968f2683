"""Cancelling or failing half-way leaves the scene as it was; progress never runs backwards."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from EfficientSegmentationCommon.errors import CancelledError
from EfficientSegmentationCommon.labels2seg import hippocampus_segments
from EfficientSegmentationCommon.progress import (
    CancelRequest,
    SceneTransaction,
    scaled,
)
from EfficientSegmentationCommon.segmentation_output import (
    SegmentSpec,
    export_segmentation_labels,
    write_labels_to_segmentation,
    write_scalar_volume,
)
from EfficientSegmentationCommon.volume_arrays import array_from_volume
from vtkmodules.vtkCommonCore import vtkIdList

HIPPOCAMPUS_SEGMENTS = hippocampus_segments()  # names and colours from the registry


def scene_state(scene, volume) -> tuple:
    """What the user would notice: nodes, their names, hierarchy items, and the input voxels."""
    names = sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))
    hierarchy = scene.GetSubjectHierarchyNode()
    items = vtkIdList()
    hierarchy.GetItemChildren(hierarchy.GetSceneItemID(), items, True)
    return scene.GetNumberOfNodes(), names, items.GetNumberOfIds(), array_from_volume(volume)[0].tobytes()


def half_done_job(scene, case, cancel: CancelRequest | None = None) -> None:
    """Writes results, then stops: by cancellation from another thread, or by failing."""
    write_labels_to_segmentation(scene, case.labels, case.geometry, case.volume, HIPPOCAMPUS_SEGMENTS)
    write_scalar_volume(scene, (case.labels > 0).astype(np.float32), case.geometry, "foreground probability")
    if cancel is None:
        raise RuntimeError("model crashed")
    worker = threading.Thread(target=cancel.cancel)
    worker.start()
    worker.join()
    cancel.raise_if_set()


def test_cancel_leaves_scene_unchanged(scene, hippocampus):
    before = scene_state(scene, hippocampus.volume)
    cancel = CancelRequest()
    with pytest.raises(CancelledError, match="cancelled"):
        with SceneTransaction(scene):
            half_done_job(scene, hippocampus, cancel)
    assert cancel.is_set
    assert scene_state(scene, hippocampus.volume) == before


def test_failure_leaves_scene_unchanged(scene, hippocampus):
    before = scene_state(scene, hippocampus.volume)
    with pytest.raises(RuntimeError, match="model crashed"):
        with SceneTransaction(scene):
            half_done_job(scene, hippocampus)
    assert scene_state(scene, hippocampus.volume) == before


def test_protected_output_segmentation_gets_its_segments_back(scene, hippocampus):
    output = write_labels_to_segmentation(
        scene, hippocampus.labels, hippocampus.geometry, hippocampus.volume, HIPPOCAMPUS_SEGMENTS
    )
    before = scene_state(scene, hippocampus.volume)
    merged = [SegmentSpec("hippocampus", (1.0, 0.0, 0.0), 1)]
    with pytest.raises(RuntimeError):
        with SceneTransaction(scene, protect=[output]):
            foreground = (hippocampus.labels > 0).astype(np.uint8)
            write_labels_to_segmentation(scene, foreground, hippocampus.geometry, hippocampus.volume, merged, output=output)
            assert output.GetSegmentation().GetNumberOfSegments() == 1
            raise RuntimeError("failed after overwriting the output")
    assert scene_state(scene, hippocampus.volume) == before
    names = [output.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]
    assert names == [spec.name for spec in HIPPOCAMPUS_SEGMENTS]
    exported = export_segmentation_labels(scene, output, hippocampus.volume, HIPPOCAMPUS_SEGMENTS)
    assert np.array_equal(exported, hippocampus.labels)


def test_success_keeps_what_was_added(scene, hippocampus):
    count = scene.GetNumberOfNodes()
    with SceneTransaction(scene) as transaction:
        node = write_labels_to_segmentation(
            scene, hippocampus.labels, hippocampus.geometry, hippocampus.volume, HIPPOCAMPUS_SEGMENTS
        )
    assert node in transaction.added_nodes
    assert scene.GetNodeByID(node.GetID()) is node
    assert scene.GetNumberOfNodes() > count


def test_scaled_progress_stays_in_range_and_never_decreases():
    reports = []
    stage = scaled(lambda value, message: reports.append(value), 0.2, 0.6)
    for fraction in (0.0, 0.5, 0.25, 1.0, 1.5, -1.0):
        stage(fraction, "running")
    assert reports == pytest.approx([0.2, 0.4, 0.4, 0.6, 0.6, 0.6])
