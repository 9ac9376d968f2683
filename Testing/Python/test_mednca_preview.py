"""Med-NCA's live preview on a real MRI, headless: the logic's callback gets label maps of the
input's shape and ends with the result; the panel's preview node (``LivePreview`` driven as the
widget's poll timer drives it) is gone after a finished and after a cancelled run."""

from __future__ import annotations

import inspect
import time

import numpy as np
import pytest

from conftest import load_case
from EfficientSegmentationCommon.background import BackgroundJob, JobState
from EfficientSegmentationCommon.preview import LivePreview
from EfficientSegmentationCommon.volume_arrays import array_from_volume
from EfficientSegmentationCommon.segmentation_output import export_segmentation_labels, write_scalar_volume
from EfficientSegmentationCommon.geometry import VolumeGeometry
from MedNCASegmentLib import logic as logic_module
from MedNCASegmentLib.inference import segment
from MedNCASegmentLib.logic import MedNCASegmentLogic
from MedNCASegmentLib.settings import MedNCASettings

CASE = "hippocampus_006"
RUNS = 2
# The automaton's intermediate labels come from the fast inference path's ``preview`` (the speed
# work); on an inference without it the logic cannot offer a preview.
LIVE = pytest.mark.skipif("preview" not in inspect.signature(segment).parameters,
                          reason="this inference.segment has no preview keyword (the fast inference path adds it)")


@pytest.fixture
def logic(scene) -> MedNCASegmentLogic:
    return MedNCASegmentLogic(scene)


@pytest.fixture
def every_preview(monkeypatch):
    """No throttle, so the frames the automaton offers all arrive, whatever the machine's speed."""
    monkeypatch.setattr(logic_module, "PREVIEW_INTERVAL_S", 0.0)
    monkeypatch.setattr(logic_module, "PREVIEW_SHARE", float("inf"))


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


@LIVE
def test_preview_labels_have_the_input_shape_and_end_with_the_result(scene, logic, every_preview) -> None:
    case = load_case(scene, CASE)
    frames: list[np.ndarray] = []
    result = logic.segment(case.volume, runs=RUNS, previewCallback=frames.append)
    assert len(frames) >= 3  # frames while the automaton runs, then the result
    for frame in frames:
        assert frame.shape == case.image.shape and frame.dtype == np.uint8
        assert set(np.unique(frame)) <= {0, 1, 2}
    np.testing.assert_array_equal(frames[-1], result.labels)
    assert any(not np.array_equal(frame, frames[-1]) for frame in frames[:-1])  # it grows: earlier frames differ


@LIVE
def test_preview_through_an_roi_is_on_the_full_input_grid(scene, logic, every_preview) -> None:
    case = load_case(scene, CASE)
    margin = (3, 6, 5)  # K, J, I voxels of empty field of view around the crop
    big = np.zeros(tuple(n + 2 * m for n, m in zip(case.image.shape, margin, strict=True)), np.float32)
    inner = tuple(slice(m, m + n) for m, n in zip(margin, case.image.shape, strict=True))
    big[inner] = case.image
    matrix = case.geometry.ijk_to_ras.copy()
    matrix[:3, 3] = case.geometry.voxel_to_ras(-np.array(margin[::-1], float))
    volume = write_scalar_volume(scene, big, VolumeGeometry(matrix, big.shape), "embedded")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    low = case.geometry.voxel_to_ras((0, 0, 0))
    high = case.geometry.voxel_to_ras(np.array(case.geometry.shape_ijk) - 1)
    roi.SetCenter(*((low + high) / 2))
    roi.SetSize(*(np.abs(high - low) + 0.5))
    frames: list[np.ndarray] = []
    result = logic.segment(volume, roi=roi, runs=RUNS, previewCallback=frames.append)
    assert all(frame.shape == big.shape for frame in frames)
    outside = np.ones(big.shape, bool)
    outside[inner] = False
    assert not any(frame[outside].any() for frame in frames)
    np.testing.assert_array_equal(frames[-1], result.labels)


def run_with_preview(scene, logic, case, cancel_after_frames: int | None):
    """Drive a background run as the panel does: the worker computes, the 'main thread' polls and
    shows the preview; cancel once ``cancel_after_frames`` frames were shown. Returns the job,
    its final status and the preview."""
    job = logic.prepare(case.volume, MedNCASettings(runs=RUNS, preview=True))
    preview = LivePreview(scene, job.input_volume, job.full_geometry, job.entry.segments, "Med-NCA", share=float("inf"))
    background = BackgroundJob()
    background.start(lambda progress, cancel: logic.compute(job, progress, cancel, previewCallback=preview.put))
    deadline = time.monotonic() + 600
    while background.state.active and time.monotonic() < deadline:
        preview.show()
        if cancel_after_frames is not None and preview.shown >= cancel_after_frames:
            background.cancel()
        time.sleep(0.05)
    return job, background.wait(), preview


@LIVE
def test_cancel_during_preview_leaves_nothing(scene, logic, every_preview) -> None:
    case = load_case(scene, CASE)
    before = node_ids(scene)
    _, status, preview = run_with_preview(scene, logic, case, cancel_after_frames=1)
    assert status.state is JobState.CANCELLED
    assert preview.shown >= 1 and preview.node is not None
    assert scene.GetNodeByID(preview.node.GetID()) is not None  # the preview was in the scene
    preview.remove()
    assert node_ids(scene) == before
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0


@LIVE
def test_finished_run_keeps_the_result_and_removes_the_preview(scene, logic, every_preview) -> None:
    case = load_case(scene, CASE)
    job, status, preview = run_with_preview(scene, logic, case, cancel_after_frames=None)
    assert status.state is JobState.FINISHED
    preview.show(force=True)  # the last frame: the result's labels
    shown = export_segmentation_labels(scene, preview.node, case.volume, job.entry.segments)
    assert preview.node.GetSaveWithScene() == 0
    result = logic.finish(job, status.result)
    preview.remove()
    segmentations = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    assert segmentations.GetNumberOfItems() == 1 and segmentations.GetItemAsObject(0) is result.segmentation
    np.testing.assert_array_equal(shown, result.labels)
    np.testing.assert_array_equal(array_from_volume(case.volume)[0], case.image)  # input untouched


def test_preview_writes_take_at_most_their_share(scene) -> None:
    """A preview that has spent its share of the time skips frames (keeping the latest) until time catches up."""
    case = load_case(scene, CASE)
    geometry = array_from_volume(case.volume)[1]
    entry = MedNCASegmentLogic(scene).model_entry(None)
    preview = LivePreview(scene, case.volume, geometry, entry.segments, "Med-NCA", share=0.03)
    labels = case.labels.astype(np.uint8)
    preview.put(labels)
    assert preview.show()  # the first frame is always shown
    preview.put(labels)
    assert not preview.show()  # right after it: over its share
    assert preview.show(force=True) and preview.shown == 2
    preview.remove()
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0


def test_preview_is_a_panel_option_not_a_cli_flag() -> None:
    from EfficientSegmentationCommon.settings import parameter_fields
    from MedNCASegmentLib.cli import parse_args

    assert MedNCASettings().preview is False
    assert ("preview", bool, False, (None, None)) in parameter_fields(MedNCASettings)
    with pytest.raises(SystemExit):
        parse_args(["x.nii.gz", "-o", "out", "--preview"])
