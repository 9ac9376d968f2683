"""Segments come out as declared: names, colours, order, empty ones, replacement, placement."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
from EfficientSegmentationCommon.labels2seg import hippocampus_segments
from EfficientSegmentationCommon.segmentation_output import (
    SegmentSpec,
    export_segmentation_labels,
    write_labels_to_segmentation,
)

HIPPOCAMPUS_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^123037004^Anatomical Structure~SCT^5300000^Hippocampus~^^"
    "~Anatomic codes - DICOM master list~^^~^^"
)

HIPPOCAMPUS_SEGMENTS = hippocampus_segments()  # names and colours from the registry


def segment_table(segmentation_node) -> list[tuple[str, tuple[float, float, float]]]:
    segmentation = segmentation_node.GetSegmentation()
    return [
        (segmentation.GetNthSegment(i).GetName(), tuple(segmentation.GetNthSegment(i).GetColor()))
        for i in range(segmentation.GetNumberOfSegments())
    ]


def test_names_and_colours_as_declared(scene, hippocampus):
    node = write_labels_to_segmentation(
        scene, hippocampus.labels, hippocampus.geometry, hippocampus.volume, HIPPOCAMPUS_SEGMENTS, name="Hippocampus"
    )
    assert node.GetName() == "Hippocampus"
    table = segment_table(node)
    assert [name for name, _ in table] == ["anterior hippocampus", "posterior hippocampus"]
    for (_, color), spec in zip(table, HIPPOCAMPUS_SEGMENTS, strict=True):
        np.testing.assert_allclose(color, spec.color, atol=1e-6)
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is hippocampus.volume
    assert node.GetSegmentation().ContainsRepresentation(slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName())


def test_batch_commands_skip_the_closed_surface_and_keep_the_labels(scene, hippocampus, tmp_path):
    """The commands' logic builds no closed surface (their files do not hold one); the saved
    .seg.nrrd reads back to the same labels as with it."""
    from EfficientSegmentationCommon import batch
    from MedNCASegmentLib.cli import parse_args
    from MedNCASegmentLib.logic import MedNCASegmentLogic
    from MedNCASegmentLib.settings import MedNCASettings

    arguments = parse_args(["input.nii.gz", "-o", str(tmp_path)])  # start_command reads no input
    session = batch.start_command(arguments, MedNCASegmentLogic, MedNCASettings)
    assert session.logic.closed_surface is False and MedNCASegmentLogic(scene).closed_surface is True
    node = write_labels_to_segmentation(scene, hippocampus.labels, hippocampus.geometry, hippocampus.volume,
                                        HIPPOCAMPUS_SEGMENTS, closed_surface=False)
    surface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    assert not node.GetSegmentation().ContainsRepresentation(surface)
    exported = export_segmentation_labels(scene, node, hippocampus.volume, HIPPOCAMPUS_SEGMENTS)
    assert np.array_equal(exported, hippocampus.labels)


def test_declared_segment_without_voxels_still_exists(scene, hippocampus):
    anterior_only = np.where(hippocampus.labels == 2, 0, hippocampus.labels)
    node = write_labels_to_segmentation(
        scene, anterior_only, hippocampus.geometry, hippocampus.volume, HIPPOCAMPUS_SEGMENTS
    )
    assert [name for name, _ in segment_table(node)] == [spec.name for spec in HIPPOCAMPUS_SEGMENTS]
    exported = export_segmentation_labels(scene, node, hippocampus.volume, HIPPOCAMPUS_SEGMENTS)
    assert np.array_equal(exported, anterior_only)


def test_output_node_segments_are_replaced(scene, hippocampus):
    output = write_labels_to_segmentation(
        scene, hippocampus.labels, hippocampus.geometry, hippocampus.volume, HIPPOCAMPUS_SEGMENTS
    )
    node_count = scene.GetNumberOfNodes()
    merged = [SegmentSpec("hippocampus", (0.9, 0.2, 0.2), 1, terminology=HIPPOCAMPUS_TERMINOLOGY)]
    result = write_labels_to_segmentation(
        scene, (hippocampus.labels > 0).astype(np.uint8), hippocampus.geometry, hippocampus.volume, merged, output=output
    )
    assert result is output
    assert scene.GetNumberOfNodes() == node_count
    assert [name for name, _ in segment_table(output)] == ["hippocampus"]
    assert output.GetSegmentation().GetNthSegment(0).GetTerminology() == HIPPOCAMPUS_TERMINOLOGY
    exported = export_segmentation_labels(scene, output, hippocampus.volume, merged)
    assert np.array_equal(exported, (hippocampus.labels > 0).astype(exported.dtype))


def test_undeclared_label_value_is_an_error(scene, hippocampus):
    with pytest.raises(ValueError, match=r"values \[2\] that no segment declares"):
        write_labels_to_segmentation(
            scene, hippocampus.labels, hippocampus.geometry, hippocampus.volume, HIPPOCAMPUS_SEGMENTS[:1]
        )


def test_segmentation_is_placed_beside_its_input(scene, hippocampus):
    hierarchy = scene.GetSubjectHierarchyNode()
    study = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "Study 1")
    hierarchy.CreateItem(study, hippocampus.volume)
    node = write_labels_to_segmentation(
        scene, hippocampus.labels, hippocampus.geometry, hippocampus.volume, HIPPOCAMPUS_SEGMENTS
    )
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
