"""The part of a module panel that both modules share: the widget lifecycle of Slicer's
scripted-module template (setup, enter, exit, scene close, parameter node and GUI binding),
model and device lists, the Segment / Cancel button, the background run polled by a timer, and
writing the result; and the parameter node fields made from a method's settings class.

Only for Slicer (imports qt). The widget classes mix this in after
``ScriptedLoadableModuleWidget`` and ``VTKObservationMixin``; what differs between the modules
is asked of them through the hooks at the end (which job to prepare, what to report, how to
show the result). The decisions themselves (button text, progress, result line) are made by
the Qt-free ``panel_state.SegmentPanel``, tested headless.

The widget's ``.ui`` must hold: ``modelComboBox``, ``deviceComboBox``,
``advancedCollapsibleButton``, ``segmentButton``, ``progressBar``, ``statusLabel``,
``resultLabel``; its parameter node the string fields ``model`` and ``device``.
"""

import logging
import traceback
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from .background import BackgroundJob, JobState
from .errors import CancelledError
from .panel_state import CANCEL, FINISH, START, RunSummary, SegmentPanel, device_choices, model_items
from .progress import scaled
from .settings import option_choices, parameter_fields
from .torch_setup import check_device, cuda_available

# Share of the progress bar for the computation (worker thread); the rest is writing the result.
COMPUTE_SHARE = 0.9
# How often the main thread polls the running job (ms): fast enough for a smooth progress bar.
POLL_INTERVAL_MS = 100


def settingsParameters(settingsClass) -> type:
    """A base class for a ``parameterNodeWrapper`` class holding one parameter per option of a
    method's settings class (``MedNCASettings``, ``OSSNetSettings``), named in camelCase.

    The module's parameter node class derives from it and adds its node fields, so that a new
    option needs no change in the module file: the wrapper reads inherited annotations and
    defaults (``typing.get_type_hints``). Numbers are floats (ctkSliderWidget binds floats),
    bounded by the option's range; a text option with choices binds to a QComboBox.
    """
    annotations, defaults = {}, {}
    choices = option_choices(settingsClass)
    for name, kind, default, (low, high) in parameter_fields(settingsClass):
        if kind is float and low is not None and high is not None:
            kind = Annotated[float, WithinRange(low, high)]
        elif name in choices:
            kind = Annotated[kind, Choice(list(choices[name]))]
        annotations[name] = kind
        defaults[name] = default
    return type(f"{settingsClass.__name__}Parameters", (), {"__annotations__": annotations, **defaults})


class SegmentWidgetMixin:
    """A module panel that segments; see the module docstring for what it needs.

    The widget class defines ``UI_FILE``, ``_createLogic`` and ``initializeParameterNode`` and
    the hooks at the end; the template's lifecycle methods are here.
    """

    METHOD_TITLE = ""  # "Med-NCA", "OSS-Net": used in messages
    UI_FILE = ""  # the panel's .ui, relative to the module's Resources

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.initializeRunning()

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath(self.UI_FILE))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets; the .ui connects the top-level widget's mrmlSceneChanged
        # signal to each MRML widget's setMRMLScene slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = self._createLogic()

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Model and device combo boxes, Segment/Cancel button, polling timer.
        self.setupRunning()

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()
        self._refresh()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.cleanupRunning()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        # Make sure parameter node exists and observed
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module; a running segmentation goes on
        (its timer still polls and writes the result)."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module).
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed: the inputs go away, so stop a running
        segmentation and write nothing."""
        self._abandonRun()
        # Parameter node will be reset, do not use it anymore
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if not self.panel.active:
            self.panel.reset()
        # If this module is shown while the scene is closed then recreate a new parameter node immediately
        if self.parent.isEntered:
            self.initializeParameterNode()
        self._refresh()

    def setParameterNode(self, inputParameterNode) -> None:
        """Set and observe parameter node.

        Observation is needed because when the parameter node is changed then the GUI must be updated immediately.
        """
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Note: in the .ui file, a Qt dynamic property called "SlicerParameterName" is set on each
            # ui element that needs connection.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._checkCanApply()

    def initializeRunning(self) -> None:
        """Called from ``__init__``."""
        self.panel = SegmentPanel(_("Segment"))
        self._job = BackgroundJob()
        self._runningJob = None  # the job being computed
        self._preview = None  # the running job's LivePreview, if it has one
        self._pollTimer = None
        self._modelItems = []
        self._modelListProblem = ""
        self._cudaChecked = False
        self._cudaAvailable = False

    def setupRunning(self) -> None:
        """Called from ``setup`` once ``self.ui`` and ``self.logic`` exist."""
        # The running job is polled from the main thread, which alone may touch MRML and Qt.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._onPoll)
        # Model and device lists depend on this installation, so they are filled here and synced
        # with the parameter node by hand; all other widgets are bound by SlicerParameterName.
        self._fillModelComboBox()
        self._fillDeviceComboBox()
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceSelected)
        self.ui.advancedCollapsibleButton.connect("contentsCollapsed(bool)", self.onAdvancedCollapsed)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)

    def cleanupRunning(self) -> None:
        """Called from ``cleanup``: stop a running segmentation without writing anything."""
        self._abandonRun()
        if self._pollTimer:
            self._pollTimer.stop()

    def _refresh(self) -> None:
        """Copy the panel's view-model onto the widgets."""
        view = self.panel.view()
        self.ui.segmentButton.text = view.button_text
        self.ui.segmentButton.enabled = view.button_enabled
        self.ui.segmentButton.toolTip = view.button_tooltip
        for section in self._settingsSections():
            section.enabled = view.settings_enabled
        self.ui.progressBar.visible = view.progress_visible
        self.ui.progressBar.value = view.progress_percent
        self.ui.progressBar.format = view.progress_format
        self.ui.statusLabel.text = view.status_text
        self.ui.resultLabel.text = view.result_text
        self.ui.resultLabel.styleSheet = view.result_style

    # -- model and device combo boxes ---------------------------------------------------------

    def _fillModelComboBox(self) -> None:
        try:
            self._modelItems = model_items(self.logic.models())
            for warning in self.logic.implementation.registry.warnings:  # skipped parts of the user's registry
                logging.warning(warning)
            self._modelListProblem = "" if self._modelItems else _("No {method} model is registered.").format(
                method=self.METHOD_TITLE)
        except Exception as error:  # unreadable registry: say so in the panel
            logging.error(traceback.format_exc())
            self._modelItems = []
            self._modelListProblem = _("The model registry cannot be read: {error}").format(error=error)
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for item in self._modelItems:
            combo.addItem(item.text, item.model_id)
            combo.setItemData(combo.count - 1, item.tooltip, qt.Qt.ToolTipRole)
        combo.blockSignals(wasBlocked)

    def _defaultModelId(self) -> str:
        return self._modelItems[0].model_id if self._modelItems else ""

    def _modelProblem(self, modelId: str) -> str:
        if self._modelListProblem:
            return self._modelListProblem
        item = next((item for item in self._modelItems if item.model_id == modelId), None)
        if item is None:
            return _("Select a model.")
        return "" if item.available else item.tooltip.splitlines()[-1]

    def _fillDeviceComboBox(self) -> None:
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for device in device_choices(self._cudaAvailable):
            combo.addItem(device, device)
        combo.blockSignals(wasBlocked)
        if self._parameterNode:
            self._selectComboBoxData(combo, self._parameterNode.device, addIfMissing=True)

    def _syncComboBoxes(self, node) -> None:
        """Show the parameter node's model and device in their (hand-synced) combo boxes."""
        self._selectComboBoxData(self.ui.modelComboBox, node.model)
        self._selectComboBoxData(self.ui.deviceComboBox, node.device, addIfMissing=True)

    @staticmethod
    def _selectComboBoxData(combo, data: str, addIfMissing: bool = False) -> None:
        """Show the item holding ``data`` without emitting signals (a saved choice stays visible)."""
        index = combo.findData(data)
        if index < 0 and addIfMissing and data:
            combo.addItem(data, data)
            index = combo.count - 1
        if index >= 0 and index != combo.currentIndex:
            wasBlocked = combo.blockSignals(True)
            combo.currentIndex = index
            combo.blockSignals(wasBlocked)

    def onModelSelected(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index)

    def onDeviceSelected(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onAdvancedCollapsed(self, collapsed: bool) -> None:
        """Look for a GPU when the user first opens Advanced (imports torch if installed, once)."""
        if collapsed or self._cudaChecked:
            return
        self._cudaChecked = True
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            self._cudaAvailable = cuda_available()
        finally:
            qt.QApplication.restoreOverrideCursor()
        self._fillDeviceComboBox()

    # -- running ------------------------------------------------------------------------------

    def onSegmentButton(self) -> None:
        """Segment, or Cancel while a segmentation runs."""
        action = self.panel.click()
        if action == CANCEL:
            if self.panel.cancel():
                self._job.cancel()
        elif action == START:
            self._startSegmentation()
        self._refresh()

    def _startSegmentation(self) -> None:
        """Read the inputs on the main thread, then compute in a worker thread polled by the timer."""
        try:
            with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
                if not self.logic.ensureTorch(askConfirmation=True):
                    self.panel.failed(_("PyTorch is needed to segment; it was not installed."))
                    return
                check_device(self._parameterNode.device or "cpu")
                job = self._prepareJob()
                # Import torch and load the (small) model here, on the main thread: a bad weights
                # file is reported at once, and torch is not first imported from a worker thread.
                self.logic.loadModel(job)
                self.panel.start()
                self._runningJob = job
                self._preview = self._createPreview(job)
                preview = {} if self._preview is None else {"previewCallback": self._preview.put}
                logic = self.logic
                self._job.start(lambda progress, cancel: logic.compute(
                    job, scaled(progress, 0.0, COMPUTE_SHARE), cancel, **preview))
                self._pollTimer.start()
        except Exception as error:  # shown by tryWithErrorDisplay; the panel says it too
            self._runningJob = None
            self._removePreview()
            self.panel.failed(str(error))

    def _onPoll(self) -> None:
        """Timer tick on the main thread: show progress; when computed, write the result."""
        status = self._job.poll()
        if self.panel.update(status) == FINISH:
            self._pollTimer.stop()
            try:
                self._finishRun(status.result)
            finally:
                self._removePreview()
        elif not self.panel.active:
            self._pollTimer.stop()
            self._runningJob = None
            self._removePreview()
            if status.state is JobState.FAILED and status.error is not None:
                logging.error(f"{self.METHOD_TITLE} segmentation failed:\n"
                              + "".join(traceback.format_exception(status.error)))
        elif self._preview is not None and status.state is JobState.RUNNING:
            try:
                self._preview.show()
            except Exception:  # a preview must never stop the run
                logging.error(f"{self.METHOD_TITLE} preview could not be shown:\n" + traceback.format_exc())
        self._refresh()

    def _removePreview(self) -> None:
        """Remove the running job's preview node, if any (run finished, cancelled, failed or abandoned)."""
        preview, self._preview = self._preview, None
        if preview is not None:
            preview.remove()

    def _finishRun(self, computed) -> None:
        """Write the computed result into the scene (all or nothing) and report it."""
        job, self._runningJob = self._runningJob, None
        self._refresh()
        try:
            result = self.logic.finish(job, computed, progressCallback=scaled(self.panel.report, COMPUTE_SHARE, 1.0))
        except CancelledError:
            self.panel.cancelled()
            return
        except Exception as error:
            logging.error(f"{self.METHOD_TITLE} segmentation could not be written:\n" + traceback.format_exc())
            self.panel.failed(str(error))
            return
        self.panel.finished(self._runSummary(result, job))
        self._showResult(result, job)

    def _abandonRun(self) -> None:
        """Stop a running segmentation without writing anything (scene closing, widget destroyed)."""
        if self.panel.active:
            if self.panel.cancel():
                self._job.cancel()
        self._removePreview()

    # -- hooks the module widget defines ------------------------------------------------------

    def _createLogic(self):
        """The module's logic (``<Module>Logic()``)."""
        raise NotImplementedError

    def initializeParameterNode(self) -> None:
        """Ensure the parameter node exists and is observed (``setParameterNode``); preselect inputs."""
        raise NotImplementedError

    def _checkCanApply(self, caller=None, event=None) -> None:
        """Parameters changed: sync the hand-bound combo boxes, say whether Segment can run."""
        raise NotImplementedError

    def _settingsSections(self) -> list:
        """The collapsible sections locked while a run is active."""
        return [self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton, self.ui.advancedCollapsibleButton]

    def _prepareJob(self):
        """The logic's job for the parameter node's settings (main thread; raises on bad input)."""
        raise NotImplementedError

    def _runSummary(self, result, job) -> RunSummary:
        """What the result line says about a finished run."""
        raise NotImplementedError

    def _createPreview(self, job):
        """A ``preview.LivePreview`` for the job when its settings ask for one (main thread), else
        None; its ``put`` becomes the logic's ``previewCallback``. No preview by default."""
        return None

    def _showResult(self, result, job) -> None:
        """Select and show the new segmentation."""
        raise NotImplementedError


def checkInputProblems(test, logic):
    """For the modules' self-tests: the panel's input check names a missing volume and a single
    slice, and accepts a small random volume, which it returns."""
    import numpy as np

    test.assertIn("No input volume", logic.inputProblem(None))
    volume = slicer.util.addVolumeFromArray(np.random.default_rng(0).random((8, 9, 10), dtype=np.float32))
    test.assertEqual(logic.inputProblem(volume), "")
    singleSlice = slicer.util.addVolumeFromArray(np.zeros((1, 9, 10), dtype=np.float32))
    test.assertIn("single slice", logic.inputProblem(singleSlice))
    return volume


def segmentCancelThenSegment(test, widget, timeoutSeconds: float) -> None:
    """For the modules' self-tests (``ScriptedLoadableModuleTest``): click Segment, then Cancel, and
    check that the scene has no new segmentation; then Segment again and wait for the end."""
    import time

    def waitWhileActive() -> None:
        deadline = time.monotonic() + timeoutSeconds
        while widget.panel.active:
            test.assertLess(time.monotonic(), deadline, "segmentation did not end in time")
            slicer.app.processEvents()
            time.sleep(0.02)

    def segmentationCount() -> int:
        return slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems()

    before = segmentationCount()
    widget.onSegmentButton()  # Segment
    test.assertEqual(widget.panel.state, JobState.RUNNING, widget.ui.resultLabel.text)
    test.assertEqual(widget.ui.segmentButton.text, widget.panel.view().button_text)
    widget.onSegmentButton()  # Cancel
    waitWhileActive()
    test.assertEqual(widget.panel.state, JobState.CANCELLED)
    test.assertEqual(segmentationCount(), before, "a cancelled run must leave the scene as it was")
    widget.onSegmentButton()  # Segment again, to the end
    waitWhileActive()
    test.assertEqual(widget.panel.state, JobState.FINISHED, widget.ui.resultLabel.text)
