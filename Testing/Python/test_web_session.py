"""The web app's session core, headless (no browser, no trame): loading, inputs, a run, reset.

The browser tests (test_web_app.py) check the page; these check the decisions behind it on the
real data, and run wherever the project's core dependencies are installed.
"""

from __future__ import annotations

import time

import numpy as np
import nibabel as nib
import pytest
from conftest import DATA_ROOT, hippocampus_paths
from EfficientSegmentationCommon.background import JobState
from EfficientSegmentationCommon.errors import InputVolumeError
from EfficientSegmentationCommon.scene import create_scene
from EfficientSegmentationWeb.session import SegmentationSession, list_data_files, page_defaults, settings_from_page
from MedNCASegmentLib.settings import MedNCASettings

BRATS_CASE = DATA_ROOT / "BraTS_sample" / "brats_2013_pat0006_1"


def _node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


@pytest.fixture
def session():
    return SegmentationSession(create_scene())


def test_bad_files_raise_a_clear_error_and_leave_the_scene(session, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    four_d = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8, 2), np.float32), np.eye(4)), four_d)
    before = _node_ids(session.scene)
    with pytest.raises(InputVolumeError, match="unreadable"):
        session.load(broken)
    with pytest.raises(InputVolumeError, match=r"'series.nii.gz' is a 4D image with 2 frames: give a 3D volume"):
        session.load(four_d)
    assert _node_ids(session.scene) == before and not session.volumes


def test_inputs_are_recognised_by_name_and_a_missing_modality_is_named(session):
    ossnet = session.entry("ossnet-brats-wholetumour")
    flair = session.load(BRATS_CASE / "Flair_subtrMeanDivStd.nii.gz")
    assert session.guess_inputs(ossnet, []) == [flair.GetID(), None]
    assert session.inputs_problem(ossnet, [flair.GetID(), None]) == "Select the T1c volume."
    t1c = session.load(BRATS_CASE / "T1c_subtrMeanDivStd.nii.gz")
    assert session.guess_inputs(ossnet, []) == [flair.GetID(), t1c.GetID()]
    assert session.inputs_problem(ossnet, [flair.GetID(), t1c.GetID()]) == ""


def test_a_run_gives_rows_and_downloads_and_reset_removes_everything(session):
    image, labels = hippocampus_paths("hippocampus_006")
    before = _node_ids(session.scene)
    volume = session.load(image)
    mednca = session.entry("mednca2d-hippocampus")
    session.start(mednca, session.guess_inputs(mednca, []), MedNCASettings(model=mednca.id, runs=1))
    assert session.wait() is JobState.FINISHED
    assert [row.name for row in session.result_rows] == ["anterior hippocampus", "posterior hippocampus"]
    truth = np.asarray(nib.load(str(labels)).dataobj)
    spacing = nib.load(str(labels)).header.get_zooms()
    truth_ml = float(np.count_nonzero(truth)) * float(np.prod(spacing)) / 1000
    measured_ml = sum(row.volume_ml for row in session.result_rows)
    assert abs(measured_ml - truth_ml) < 0.25 * truth_ml
    name, data = session.download("nii.gz")
    assert name == f"{volume.GetName()}_mednca.nii.gz" and data[:2] == b"\x1f\x8b"
    session.reset()
    assert _node_ids(session.scene) == before and session.result is None and not session.volumes


def test_cancel_writes_nothing(session):
    image, _ = hippocampus_paths("hippocampus_006")
    session.load(image)
    before = _node_ids(session.scene)
    mednca = session.entry("mednca2d-hippocampus")
    session.start(mednca, session.guess_inputs(mednca, []), MedNCASettings(model=mednca.id, runs=50))
    session.cancel()
    assert session.wait() is JobState.CANCELLED
    assert session.result is None and _node_ids(session.scene) == before


def test_only_image_files_of_the_data_folder_are_offered(tmp_path):
    (tmp_path / "case").mkdir()
    for name in ("case/a.nii.gz", "b.nrrd", "notes.txt", ".hidden.nii"):
        (tmp_path / name).write_bytes(b"")
    assert list_data_files(tmp_path) == ["b.nrrd", "case/a.nii.gz"]
    assert list_data_files(None) == []


def test_page_values_become_the_methods_settings(session):
    mednca, ossnet = session.entry("mednca2d-hippocampus"), session.entry("ossnet-brats-wholetumour")
    values = page_defaults()
    assert settings_from_page(mednca, values) == MedNCASettings(model=mednca.id)  # trained steps, 10 runs
    values.update(runs="3", trained_steps=False, global_steps=20, refinement_steps="12")
    chosen = settings_from_page(mednca, values)
    assert (chosen.runs, chosen.global_steps, chosen.refinement_steps) == (3, 20, 12)
    assert settings_from_page(ossnet, dict(values, resolution="2")).resolution == 2.0
    with pytest.raises(ValueError, match="runs"):
        settings_from_page(mednca, dict(values, runs=0))
    with pytest.raises(ValueError, match="resolution must be a number"):
        settings_from_page(ossnet, dict(values, resolution=""))


@pytest.fixture
def every_preview(monkeypatch):
    """No throttle on the logic's relay, so frames arrive whatever the machine's speed."""
    from MedNCASegmentLib import logic as logic_module

    monkeypatch.setattr(logic_module, "PREVIEW_INTERVAL_S", 0.0)
    monkeypatch.setattr(logic_module, "PREVIEW_SHARE", float("inf"))


def _segmentation_ids(scene) -> list[str]:
    nodes = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    return [nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())]


def _poll_until_preview_shown(session, timeout: float = 300.0):
    """Poll as the page's loop does until the preview node is in the scene; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert session.poll().active, "the run ended before any preview was shown"
        preview = session.preview
        if preview is not None and preview.node is not None and session.scene.GetNodeByID(preview.node.GetID()):
            return preview.node
        time.sleep(0.05)
    raise AssertionError("no preview node appeared")


def test_live_preview_shows_the_run_and_is_removed_when_it_finishes(session, every_preview):
    from EfficientSegmentationCommon.segmentation_output import export_segmentation_labels

    image, _ = hippocampus_paths("hippocampus_006")
    volume = session.load(image)
    before = _node_ids(session.scene)
    mednca = session.entry("mednca2d-hippocampus")
    session.start(mednca, [volume.GetID()], MedNCASettings(model=mednca.id, runs=2, preview=True))
    session.preview.share, session.preview_interval = float("inf"), 0.0  # write every frame the poll finds
    node = _poll_until_preview_shown(session)
    assert node.GetName() == f"{volume.GetName()} Med-NCA preview" and not node.GetSaveWithScene()
    session._job.wait(600)  # the worker is done; the page's next poll writes the result
    session.preview.show(force=True)  # the last frame the worker handed over
    shown = export_segmentation_labels(session.scene, node, volume, mednca.segments)
    assert session.poll() is JobState.FINISHED
    np.testing.assert_array_equal(shown, session.result.labels)  # the final preview is the result
    # Two runs give both quality signals; the page's result text shows them.
    assert "Spread of the runs inside the structure" in session.panel.view().result_text
    assert session.preview is None and session.scene.GetNodeByID(node.GetID()) is None
    result = session.result.segmentation
    displays = {result.GetNthDisplayNode(i).GetID() for i in range(result.GetNumberOfDisplayNodes())}
    assert set(_node_ids(session.scene)) - set(before) == {result.GetID()} | displays  # nothing of the preview


def test_live_preview_is_removed_after_cancel_and_reset(session, every_preview):
    image, _ = hippocampus_paths("hippocampus_006")
    volume = session.load(image)
    before = _node_ids(session.scene)
    mednca = session.entry("mednca2d-hippocampus")
    settings = MedNCASettings(model=mednca.id, runs=50, preview=True)
    session.start(mednca, [volume.GetID()], settings)
    _poll_until_preview_shown(session)
    session.cancel()
    assert session.wait() is JobState.CANCELLED
    assert session.preview is None and _node_ids(session.scene) == before and session.result is None
    session.start(mednca, [volume.GetID()], settings)  # abandoned mid-run: the user closes the page
    _poll_until_preview_shown(session)
    session.reset()
    assert session.preview is None and _segmentation_ids(session.scene) == [] and not session.volumes


def test_no_preview_unless_the_settings_ask(session):
    image, _ = hippocampus_paths("hippocampus_006")
    volume = session.load(image)
    mednca = session.entry("mednca2d-hippocampus")
    session.start(mednca, [volume.GetID()], MedNCASettings(model=mednca.id, runs=1))
    assert session.preview is None
    assert session.wait() is JobState.FINISHED and _segmentation_ids(session.scene) == [
        session.result.segmentation.GetID()]
