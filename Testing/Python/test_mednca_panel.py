"""The Med-NCA panel's behaviour, checked without Slicer's GUI: the Qt-free state machine both
modules share (``EfficientSegmentationCommon.panel_state``), driven by hand and by a real
background job; the Med-NCA rules (``MedNCASegmentLib.panel``); getting PyTorch on first use.
The .ui and module-file checks of both panels are in test_module_panels.py.
"""

from __future__ import annotations

import sys
import threading
import types

import numpy as np
import pytest
import slicer

from EfficientSegmentationCommon import torch_setup
from EfficientSegmentationCommon.background import BackgroundJob, JobState, JobStatus
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.panel_state import (
    CANCEL,
    ERROR_STYLE,
    FINISH,
    START,
    WARNING_STYLE,
    RunSummary,
    SegmentPanel,
    device_choices,
    model_items,
    format_duration,
    summary_text,
)
from EfficientSegmentationCommon.registry import ModelEntry, ModelRegistry
from MedNCASegmentLib.logic import MedNCAResult
from MedNCASegmentLib.panel import panel_boxes, panel_settings, run_summary, trained_settings, volume_lines
from MedNCASegmentLib.settings import MedNCASettings

class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def status(state: JobState, fraction: float = 0.0, message: str = "", result=None, error=None) -> JobStatus:
    return JobStatus(state, fraction, message, result, error)


def test_idle_panel_offers_segment_only_when_the_inputs_are_usable():
    panel = SegmentPanel()
    view = panel.view()
    assert (view.state, view.button_text, view.button_enabled) == (JobState.IDLE, "Segment", True)
    assert not view.progress_visible and view.settings_enabled and view.result_text == ""
    panel.set_input_problem("No input volume: select a scalar volume to segment.")
    view = panel.view()
    assert not view.button_enabled and panel.click() is None
    assert view.status_text.startswith("No input volume") and view.button_tooltip.startswith("No input volume")
    with pytest.raises(RuntimeError, match="No input volume"):
        panel.start()
    panel.set_input_problem("")
    assert panel.click() == START and panel.view().status_text == ""


def test_idle_running_finished():
    clock = FakeClock()
    panel = SegmentPanel(clock=clock)
    panel.start()
    view = panel.view()
    assert (view.state, view.button_text, view.button_enabled) == (JobState.RUNNING, "Cancel", True)
    assert not view.settings_enabled and view.progress_visible and panel.click() == CANCEL
    with pytest.raises(RuntimeError, match="already running"):
        panel.start()

    assert panel.update(status(JobState.RUNNING, 0.0, "Loading model Med-NCA hippocampus")) is None
    assert panel.view().progress_text == "Loading model Med-NCA hippocampus"
    clock.now += 30.0
    panel.update(status(JobState.RUNNING, 0.25, "run 3/10: global step 5/24"))
    view = panel.view()
    assert view.progress_percent == 25
    assert view.progress_text == "Run 3/10: global step 5/24 (about 1 min 30 s left)"
    panel.update(status(JobState.RUNNING, 0.5, "run 6/10: refinement step 2/16"))
    assert panel.view().progress_text.startswith("Run 6/10: refinement step 2/16")

    assert panel.update(status(JobState.FINISHED, 0.9, "Done")) == FINISH
    view = panel.view()
    assert view.state is JobState.RUNNING and view.progress_text.startswith("Writing the result")
    panel.report(0.95, "Writing segmentation")
    panel.finished(RunSummary(seconds=75, quality={"anterior hippocampus": 0.0123, "posterior hippocampus": 0.02},
                              quality_name="quality score (NQM)", warning_threshold=0.1, output_name="case Med-NCA"))
    view = panel.view()
    assert (view.state, view.button_text, view.button_enabled) == (JobState.FINISHED, "Segment", True)
    assert view.progress_percent == 100 and view.progress_text == "Done" and view.settings_enabled
    assert view.result_style == "" and not view.result_is_warning
    assert "Done in 1 min 15 s: 'case Med-NCA'." in view.result_text
    assert "Quality score (NQM) (lower is better, warning above 0.1): anterior hippocampus 0.012, " \
           "posterior hippocampus 0.020." in view.result_text
    panel.start()  # a new run clears the old result
    assert panel.view().result_text == "" and panel.fraction == 0.0


def test_running_cancelling_cancelled_then_idle():
    panel = SegmentPanel()
    panel.start()
    assert panel.click() == CANCEL and panel.cancel() is True
    view = panel.view()
    assert (view.state, view.button_text, view.button_enabled) == (JobState.CANCELLING, "Cancelling...", False)
    assert panel.click() is None and panel.cancel() is False and not view.settings_enabled
    panel.update(status(JobState.CANCELLING, 0.4, "Cancelling"))
    assert panel.state is JobState.CANCELLING
    panel.update(status(JobState.CANCELLED, 0.4, "Cancelled"))
    view = panel.view()
    assert (view.state, view.button_text, view.button_enabled) == (JobState.CANCELLED, "Segment", True)
    assert view.progress_text == "Cancelled" and "scene was left as it was" in view.result_text
    panel.reset()
    view = panel.view()
    assert view.state is JobState.IDLE and not view.progress_visible and view.result_text == ""


def test_a_cancel_wins_over_a_computation_that_finished_anyway():
    panel = SegmentPanel()
    panel.start()
    panel.cancel()
    assert panel.update(status(JobState.FINISHED, 0.9, "Done", result=object())) is None
    assert panel.state is JobState.CANCELLED


def test_running_failed_with_its_message():
    panel = SegmentPanel()
    panel.start()
    panel.update(status(JobState.RUNNING, 0.3, "run 1/2: global step 3/24"))
    panel.update(status(JobState.FAILED, 0.3, "The weights of model 'x' are missing: /m.pt",
                        error=ValueError("The weights of model 'x' are missing: /m.pt")))
    view = panel.view()
    assert (view.state, view.button_text, view.button_enabled) == (JobState.FAILED, "Segment", True)
    assert view.result_text == "Segmentation failed: The weights of model 'x' are missing: /m.pt"
    assert view.result_style == ERROR_STYLE and view.progress_percent == 30
    # failing while writing the result on the main thread
    panel.start()
    assert panel.update(status(JobState.FINISHED, 0.9)) == FINISH
    panel.failed("Slicer could not import the label map")
    assert panel.view().result_text.endswith("could not import the label map")


def test_progress_never_goes_back_and_percent_signs_are_escaped_for_qprogressbar():
    panel = SegmentPanel()
    panel.start()
    panel.report(0.6, "far")
    panel.report(0.2, "back?")
    panel.report(7.0, "beyond")
    assert panel.fraction == 1.0
    panel.report(0.5, "50% of the slices")
    assert panel.view().progress_format == "50%% of the slices (%p%)"
    idle = SegmentPanel()
    idle.report(0.5, "ignored while idle")
    assert idle.fraction == 0.0 and idle.view().progress_format == "%p%"


def test_a_likely_failure_is_a_red_warning():
    panel = SegmentPanel()
    panel.start()
    panel.update(status(JobState.FINISHED, 0.9))
    panel.finished(RunSummary(seconds=8, quality={"anterior hippocampus": 0.4}, likely_failure=True,
                              warning_threshold=0.25, warnings=["High quality score: the segmentation is likely wrong."]))
    view = panel.view()
    assert view.result_style == WARNING_STYLE and view.result_is_warning and "color: #d32f2f" in WARNING_STYLE
    assert "WARNING: High quality score: the segmentation is likely wrong." in view.result_text


def test_a_real_background_job_driven_through_the_panel():
    job, panel = BackgroundJob(), SegmentPanel()
    release = threading.Event()

    def work(progress, cancel):
        progress(0.5, "run 1/2: global step 12/24")
        release.wait(5)
        return "computed"

    panel.start()
    job.start(work)
    release.set()
    final = job.wait(5)
    assert panel.update(final) == FINISH and final.result == "computed"
    panel.finished(RunSummary(seconds=1.0))
    assert panel.state is JobState.FINISHED

    job2, panel2 = BackgroundJob(), SegmentPanel()
    started = threading.Event()

    def endless(progress, cancel):
        started.set()
        while True:
            cancel.raise_if_set()
            progress(0.1, "working")

    panel2.start()
    job2.start(endless)
    started.wait(5)
    assert panel2.cancel()
    job2.cancel()
    panel2.update(job2.wait(5))
    assert panel2.state is JobState.CANCELLED


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0 s"), (8, "8 s"), (60, "1 min"), (125, "2 min 5 s"),
                                                (3600, "1 h"), (3780, "1 h 3 min")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_device_choices():
    assert device_choices(False) == ["cpu"] and device_choices(True) == ["cpu", "cuda"]


# -- Med-NCA panel rules ----------------------------------------------------------------------


def panel_parameters(**changes):
    """A parameter node as the panel makes it: one parameter per setting (its panel default) and the node fields."""
    from EfficientSegmentationCommon.settings import parameter_fields

    values = {name: default for name, _, default, _ in parameter_fields(MedNCASettings)}
    values.update(inputVolume=None, inputROI=None, outputSegmentation=None, useTrainedSettings=True,
                  model="mednca2d-hippocampus", leftBox=None, rightBox=None)
    values.update(changes)
    return types.SimpleNamespace(**values)


def test_panel_settings_leave_stage_settings_to_the_model_by_default():
    assert panel_settings(panel_parameters()) == MedNCASettings(model="mednca2d-hippocampus")


def test_panel_settings_turn_slider_floats_into_integers():
    settings = panel_settings(panel_parameters(
        useTrainedSettings=False, globalSteps=11.6, refinementSteps=3.0, downscale=2.0, runs=1.0, model="",
        device="", uncertaintyVolume=True, seed=7.0, keepLargestComponent=False))
    assert settings == MedNCASettings(model=None, global_steps=12, refinement_steps=3, downscale=2, runs=1,
                                      device="cpu", uncertainty_volume=True, seed=7, keep_largest_component=False)
    assert all(type(getattr(settings, k)) is int for k in ("global_steps", "refinement_steps", "downscale", "runs"))


def test_the_cli_flags_are_made_from_the_settings():
    """The parameter node (test_module_panels.py), the CLI and the console keywords are all made from MedNCASettings."""
    from MedNCASegmentLib.cli import parse_args

    arguments = parse_args(["x.nii.gz", "-o", "out", "--runs", "3", "--global-steps", "5",
                            "--no-keep-largest-component"])
    assert (arguments.runs, arguments.global_steps, arguments.keep_largest_component) == (3, 5, False)


@pytest.mark.parametrize(("options", "message"), [({"runs": 0}, "runs must be between 1 and 50"),
                                                   ({"globalSteps": -1}, "globalSteps must be between"),
                                                   ({"downscale": 2.5}, "downscale must be a whole number"),
                                                   ({"keepLargestComponent": "yes"}, "True or False")])
def test_settings_are_validated_in_one_place(options, message):
    from EfficientSegmentationCommon.settings import settings_from_keywords

    with pytest.raises(ValueError, match=message):
        settings_from_keywords(MedNCASettings, **options)
    with pytest.raises(TypeError, match="unknown option 'runz'"):
        settings_from_keywords(MedNCASettings, runz=3)


def test_trained_settings_fill_the_sliders():
    from MedNCASegmentLib.nca import MedNCAConfig  # torch is fine in the headless tests

    config = MedNCAConfig(global_steps=30, refinement_steps=12, downscale=2)
    assert trained_settings(config) == {"globalSteps": 30.0, "refinementSteps": 12.0, "downscale": 2.0}


def test_model_items_from_the_real_registry(tmp_path):
    registry = ModelRegistry.default()
    entries = [entry for entry in registry.entries if entry.method == "mednca"]
    items = model_items(entries)
    assert [item.model_id for item in items] == [entry.id for entry in entries] and items
    for item, entry in zip(items, entries, strict=True):
        assert item.available == entry.path.exists()
        assert item.text.startswith(entry.title) and entry.description in item.tooltip
    missing = ModelEntry(id="x", title="Missing model", method="mednca", task="t", inputs=("T1",), segments=(),
                         path=tmp_path / "nothing.pt")
    (item,) = model_items([missing])
    assert not item.available and item.text == "Missing model (weights not installed)"
    assert item.tooltip.splitlines()[-1] == f"Weights file missing: {tmp_path / 'nothing.pt'}"


def result(quality, threshold, warnings=(), structure_spread=None, spread_threshold=None, mode="crop"):
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName("hippocampus_001 Med-NCA")
    return MedNCAResult(node, np.zeros((2, 2, 2), np.uint8), VolumeGeometry.compose((2, 2, 2), (1.0, 1.0, 1.0)), quality,
                        None, 12.0, list(warnings), quality_warning_threshold=threshold,
                        structure_spread=structure_spread or {}, structure_spread_warning_threshold=spread_threshold,
                        mode=mode)


def test_run_summary_of_a_good_result():
    summary = run_summary(result({"anterior hippocampus": 0.01, "posterior hippocampus": 0.02}, 0.1))
    assert summary.quality_name == "quality score (NQM)" and summary.warning_threshold == 0.1
    assert not summary.likely_failure and summary.output_name == "hippocampus_001 Med-NCA"
    panel = SegmentPanel()
    panel.start()
    panel.finished(summary)
    assert "NQM" in panel.view().result_text and not panel.view().result_is_warning


def test_run_summary_warns_in_red_when_the_logic_flags_a_likely_failure():
    bad = result({"anterior hippocampus": 0.5, "posterior hippocampus": 0.02}, 0.1,
                 ["High quality score (NQM above 0.1): the segmentation is likely wrong."])
    assert bad.likely_failure
    summary = run_summary(bad)
    assert summary.likely_failure
    panel = SegmentPanel()
    panel.start()
    panel.finished(summary)
    view = panel.view()
    assert view.result_is_warning and "likely wrong" in view.result_text


def test_one_run_has_no_quality_score():
    one_run = "One run gives no quality scores (NQM and the spread inside the structure need at least 2 runs)"
    summary = run_summary(result({"anterior hippocampus": None, "posterior hippocampus": None}, 0.1, [one_run]))
    assert summary.quality == {} and not summary.likely_failure
    panel = SegmentPanel()
    panel.start()
    panel.finished(summary)
    assert one_run in panel.view().result_text and "NQM)" not in panel.view().result_text.splitlines()[0]


# -- getting torch through Slicer's PyTorch extension ---------------------------------------


class FakePyTorchUtilsLogic:
    installed = False
    answer = object()  # what installTorch returns: the torch module, or None when the user declines
    calls: list = []

    @staticmethod
    def torchInstalled():
        return FakePyTorchUtilsLogic.installed

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
        FakePyTorchUtilsLogic.calls.append((askConfirmation, torchVersionRequirement))
        return FakePyTorchUtilsLogic.answer


@pytest.fixture
def no_torch(monkeypatch):
    """As in a fresh Slicer: torch not installed, the PyTorch extension's PyTorchUtils present."""
    monkeypatch.setattr(torch_setup, "torch_installed", lambda: False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FakePyTorchUtilsLogic))
    FakePyTorchUtilsLogic.installed = False
    FakePyTorchUtilsLogic.answer = object()
    FakePyTorchUtilsLogic.calls = []


def test_torch_present_needs_nothing():
    assert torch_setup.torch_installed() and torch_setup.ensure_torch()


def test_missing_torch_is_installed_through_pytorchutils_after_confirmation(no_torch):
    assert torch_setup.ensure_torch(ask_confirmation=True) is True
    assert FakePyTorchUtilsLogic.calls == [(True, f">={torch_setup.MINIMUM_TORCH_VERSION}")]


def test_declining_the_install_is_not_an_error(no_torch):
    FakePyTorchUtilsLogic.answer = None
    assert torch_setup.ensure_torch() is False


def test_pytorchutils_reporting_torch_installed_skips_the_install(no_torch):
    FakePyTorchUtilsLogic.installed = True
    assert torch_setup.ensure_torch() is True and FakePyTorchUtilsLogic.calls == []


def test_without_the_pytorch_extension_the_message_says_what_to_install(monkeypatch):
    monkeypatch.setattr(torch_setup, "torch_installed", lambda: False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import raises ModuleNotFoundError
    with pytest.raises(torch_setup.TorchUnavailableError, match="Extensions Manager"):
        torch_setup.ensure_torch()
    assert torch_setup.cuda_available() is False


def test_check_device():
    torch_setup.check_device("cpu")
    with pytest.raises(ValueError, match="Unknown device"):
        torch_setup.check_device("tpu")
    if not torch_setup.cuda_available():
        with pytest.raises(ValueError, match="cannot be used: .*Available: cpu"):
            torch_setup.check_device("cuda")


def test_whole_head_boxes_are_reused_only_as_a_pair_of_this_volume_and_not_with_an_roi(scene):
    from MedNCASegmentLib.box_nodes import VOLUME_ATTRIBUTE

    volume, other = (scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name) for name in ("head", "other head"))
    left, right, roi = (scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name) for name in ("l", "r", "roi"))
    for box in (left, right):
        box.SetAttribute(VOLUME_ATTRIBUTE, volume.GetID())
    assert panel_boxes(panel_parameters(inputVolume=volume, leftBox=left, rightBox=right)) == {"left": left,
                                                                                               "right": right}
    assert panel_boxes(panel_parameters(inputVolume=volume, leftBox=left)) is None  # locate again
    assert panel_boxes(panel_parameters(inputVolume=other, leftBox=left, rightBox=right)) is None  # another scan
    assert panel_boxes(panel_parameters(inputVolume=volume, leftBox=left, rightBox=right, inputROI=roi)) is None
    assert panel_settings(panel_parameters(mode="head")).mode == "head"


def test_volumes_are_shown_as_a_small_table():
    from MedNCASegmentLib.wholehead import HippocampusVolumes

    volumes = HippocampusVolumes({"left anterior hippocampus": 1500.0, "left posterior hippocampus": 1700.0,
                                  "right anterior hippocampus": 1400.0, "right posterior hippocampus": 1600.0},
                                 3200.0, 3000.0)
    assert volume_lines(volumes) == [
        "Left hippocampus: 3200 mm³ (anterior 1500, posterior 1700)",
        "Right hippocampus: 3000 mm³ (anterior 1400, posterior 1600)",
        "Total: 6200 mm³; asymmetry index (L−R)/((L+R)/2): +6.5 %"]
    one = HippocampusVolumes({"anterior hippocampus": 1400.0, "posterior hippocampus": 1500.0})
    assert volume_lines(one) == ["Volume: 2900 mm3 (anterior hippocampus 1400, posterior hippocampus 1500)"]
    summary = run_summary(MedNCAResult(None, np.zeros((2, 2, 2), np.uint8), VolumeGeometry.compose((2, 2, 2), (1.0,) * 3),
                                       {}, volumes=volumes))
    assert list(summary.details) == volume_lines(volumes)


def test_spread_inside_the_structure_flags_a_result_that_nqm_passes():
    """The spread inside the structure warns (the message names where); NQM warns only for a
    model without a spread threshold, so the same segmentation is judged alike in every mode."""
    quality = {"anterior hippocampus": 0.05, "posterior hippocampus": 0.06}
    good = result(quality, 0.1561, structure_spread={"structure": 0.031}, spread_threshold=0.0548)
    assert not good.likely_failure and good.failure_signals == []
    crop = result(quality, 0.1561, structure_spread={"structure": 0.071}, spread_threshold=0.0548)
    assert crop.likely_failure and crop.failure_signals == ["spread inside the structure above 0.0548"]
    head = result(quality, 0.1561, structure_spread={"left": 0.03, "right": 0.09}, spread_threshold=0.0548, mode="head")
    assert head.failure_signals == ["spread inside the structure above 0.0548 (right)"]
    # NQM (which grows with the box) does not warn when the spread can: not on a whole head, not in an ROI box.
    for mode, spread in (("head", {"left": 0.044, "right": 0.047}), ("crop", {"structure": 0.044})):
        wide = result({"posterior hippocampus": 0.19}, 0.173, structure_spread=spread, spread_threshold=0.0548, mode=mode)
        assert not wide.likely_failure and wide.nqm_warning_threshold is None
        assert "warning above" not in summary_text(run_summary(wide))[0].split("NQM")[1].splitlines()[0]
    # With a score, a structure with nothing segmented is flagged (not after one run: no score).
    nothing = result({"left posterior hippocampus": 1.7}, 0.173, structure_spread={"left": None, "right": None},
                     spread_threshold=0.0548, mode="head")
    assert nothing.likely_failure and nothing.failure_signals == ["nothing segmented (left, right)"]
    # A part with nothing in a segmented structure is named (every hippocampus has both parts).
    from MedNCASegmentLib.wholehead import HippocampusVolumes

    part = result(quality, 0.1561, structure_spread={"structure": 0.031}, spread_threshold=0.0548)
    part.volumes = HippocampusVolumes({"anterior hippocampus": 0.0, "posterior hippocampus": 305.0})
    assert part.failure_signals == ["nothing segmented (anterior hippocampus)"]
    side = result({"left anterior hippocampus": 0.05, "right anterior hippocampus": 0.06}, 0.173,
                  structure_spread={"left": None, "right": 0.03}, spread_threshold=0.0548, mode="head")
    side.volumes = HippocampusVolumes({"left anterior hippocampus": 0.0, "left posterior hippocampus": 0.0,
                                       "right anterior hippocampus": 1500.0, "right posterior hippocampus": 0.0},
                                      0.0, 1500.0)
    assert side.failure_signals == ["nothing segmented (left, right posterior hippocampus)"]
    # A part outside the registry's plausible volumes is flagged, with a score or without (one run).
    from EfficientSegmentationCommon.registry import ModelRegistry

    entry = ModelRegistry.default().get("mednca2d-hippocampus")
    ranges = {spec.name: spec.plausible_mm3 for spec in entry.segments}
    assert ranges == {"anterior hippocampus": (527.0, 5186.0), "posterior hippocampus": (496.0, 4338.0)}
    for scores, spread in ((quality, {"structure": 0.031}), (dict.fromkeys(quality), {"structure": None})):
        huge = result(scores, 0.1561, structure_spread=spread, spread_threshold=0.0548)
        huge.volumes, huge.plausible_volumes_mm3 = HippocampusVolumes({"anterior hippocampus": 31000.0,
                                                                       "posterior hippocampus": 1.0}), ranges
        assert huge.likely_failure and huge.failure_signals == [
            "implausible volume (anterior hippocampus 31000 mm3, plausible 527 to 5186; "
            "posterior hippocampus 1 mm3, plausible 496 to 4338)"]
    heads = {spec.name: spec.plausible_mm3 for spec in entry.bilateral_segments}
    assert heads["right posterior hippocampus"] == (496.0, 4338.0)
    both = result({"anterior hippocampus": 0.3, "posterior hippocampus": 0.06}, 0.1561,
                  structure_spread={"structure": 0.09}, spread_threshold=0.0548)
    assert both.failure_signals == ["spread inside the structure above 0.0548"]
    # A model of the user's without a spread threshold: NQM warns, in any mode.
    own = result({"anterior hippocampus": 0.3, "posterior hippocampus": 0.06}, 0.1561, structure_spread={"structure": 0.09})
    assert own.nqm_warning_threshold == 0.1561
    assert own.failure_signals == ["NQM above 0.1561 (anterior hippocampus)"]
    text = summary_text(run_summary(head))[0]
    assert "Spread of the runs inside the structure (lower is better, warning above 0.0548): left 0.030, right 0.090." in text
    assert "0.031." in summary_text(run_summary(good))[0]
    # After one run there is no spread and no line for it.
    single = result({"anterior hippocampus": None, "posterior hippocampus": None}, 0.1561,
                    structure_spread={"structure": None}, spread_threshold=0.0548)
    assert not single.likely_failure and "inside the structure" not in summary_text(run_summary(single))[0]
