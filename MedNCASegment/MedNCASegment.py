"""Med-NCA Segment: hippocampus segmentation with a neural cellular automaton, on a CPU.

The Slicer module shell: module description, panel, batch logic and self-test. The algorithm
lives in MedNCASegmentLib and the Slicer glue in EfficientSegmentationCommon; neither torch
nor the model is loaded when Slicer starts, only when a segmentation is run.

The panel's behaviour (button, progress, result text) is the Qt-free state machine
``EfficientSegmentationCommon.panel_state.SegmentPanel``; the Med-NCA specific rules are in
``MedNCASegmentLib.panel``. Both are tested headless; the widget below only wires them to Qt.
"""

import importlib.util
import logging
import os
import sys
import time
import traceback
from typing import Annotated, Optional

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _addSharedPackageToPath() -> None:
    """Make EfficientSegmentationCommon importable when running from the source tree.

    A built extension installs the package beside this file. When this folder is added to
    Slicer's additional module paths instead, the package is in ../Resources/Python.
    """
    sourceTreePath = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "Resources", "Python"))
    if importlib.util.find_spec("EfficientSegmentationCommon") is None and os.path.isdir(sourceTreePath):
        sys.path.append(sourceTreePath)


_addSharedPackageToPath()

from EfficientSegmentationCommon.background import BackgroundJob, JobState  # noqa: E402
from EfficientSegmentationCommon.errors import CancelledError, InputVolumeError  # noqa: E402
from EfficientSegmentationCommon.panel_state import CANCEL, FINISH, START, SegmentPanel, device_choices  # noqa: E402
from EfficientSegmentationCommon.progress import scaled  # noqa: E402
from EfficientSegmentationCommon.torch_setup import check_device, cuda_available, ensure_torch  # noqa: E402
from EfficientSegmentationCommon.volume_arrays import check_scalar_volume  # noqa: E402
from MedNCASegmentLib.panel import (  # noqa: E402
    STAGE_NAMES,
    model_items,
    run_summary,
    segment_arguments,
    trained_settings,
)

# Share of the progress bar for the computation (worker thread); the rest is writing the result.
COMPUTE_SHARE = 0.9
# How often the main thread polls the running job (ms): fast enough for a smooth progress bar.
POLL_INTERVAL_MS = 100


class MedNCASegment(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Med-NCA Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["EfficientSegmentation contributors"]
        self.parent.helpText = _(
            "Segments the hippocampus (anterior and posterior parts) in T1-weighted MRI with Med-NCA, "
            "a neural cellular automaton small enough to run on an ordinary CPU. Select the input volume "
            "(and, on a whole-head scan, an ROI around one hippocampus), then click Segment; the button "
            "turns into Cancel while the model runs, and Slicer stays usable. After the run, the quality "
            "score (NQM) tells how much the stochastic runs disagreed: a high score, shown in red, signals "
            "a likely failure. PyTorch is installed through the PyTorch extension on first use. "
            "See the extension's README for details."
        )
        self.parent.acknowledgementText = _(
            "Med-NCA: J. Kalkhof and A. Mukhopadhyay, 'Med-NCA: Robust and Lightweight Segmentation "
            "with Neural Cellular Automata', IPMI 2023. Hippocampus data: Medical Segmentation "
            "Decathlon, Task04 (Simpson et al. 2019; Antonelli et al. 2022), CC-BY-SA 4.0."
        )


@parameterNodeWrapper
class MedNCASegmentParameterNode:
    """Panel state, saved with the scene.

    inputVolume: the volume to segment.
    inputROI: optional markups ROI; only the voxels inside it are segmented.
    model: registry id of the model (set from the model combo box, which is filled at run time).
    outputSegmentation: segmentation whose segments are replaced by the result (None: a new one).
    createUncertaintyVolume: also write the spread of the stochastic runs as a volume.
    useTrainedSettings: leave globalSteps, refinementSteps and downscale to the model.
    globalSteps, refinementSteps, downscale: stage settings (floats: ctkSliderWidget binds floats).
    runs: stochastic runs; their mean is the result and their spread the quality score.
    device: "cpu" or "cuda" (set from the device combo box, which lists what this computer has).
    seed: seed of the random cell updates.
    keepLargestComponent: clear everything but the largest connected structure.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputROI: vtkMRMLMarkupsROINode
    model: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    createUncertaintyVolume: bool = False
    useTrainedSettings: bool = True
    globalSteps: Annotated[float, WithinRange(0, 100)] = 24.0
    refinementSteps: Annotated[float, WithinRange(0, 100)] = 16.0
    downscale: Annotated[float, WithinRange(1, 8)] = 4.0
    runs: Annotated[float, WithinRange(1, 50)] = 10.0
    device: str = "cpu"
    seed: Annotated[int, WithinRange(0, 1000000)] = 0
    keepLargestComponent: bool = True


class MedNCASegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: binds the .ui to the parameter node and runs segmentations in the background."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.panel = SegmentPanel(_("Segment"), stage_names=STAGE_NAMES)
        self._job = BackgroundJob()
        self._runningJob = None  # the MedNCAJob being computed
        self._pollTimer = None
        self._modelItems = []
        self._modelListProblem = ""
        self._cudaChecked = False
        self._cudaAvailable = False

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedNCASegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets; the .ui connects the top-level widget's mrmlSceneChanged
        # signal to each MRML widget's setMRMLScene slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedNCASegmentLogic()

        # The running job is polled from the main thread, which alone may touch MRML and Qt.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._onPoll)

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Model and device lists depend on this installation, so they are filled here and synced
        # with the parameter node by hand; all other widgets are bound by SlicerParameterName.
        self._fillModelComboBox()
        self._fillDeviceComboBox()
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceSelected)
        self.ui.advancedCollapsibleButton.connect("contentsCollapsed(bool)", self.onAdvancedCollapsed)

        # Buttons
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()
        self._refresh()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self._abandonRun()
        if self._pollTimer:
            self._pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        # Make sure parameter node exists and observed
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module).
        # A running segmentation goes on; its timer still polls and writes the result.
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        # The inputs go away: stop a running segmentation, write nothing.
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

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        # Parameter node stores all user choices in parameter values, node selections, etc.
        # so that when the scene is saved and reloaded, these settings are restored.
        self.setParameterNode(self.logic.getParameterNode())

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode
        if not self._parameterNode.model and self._modelItems:
            self._parameterNode.model = self._modelItems[0].model_id

    def setParameterNode(self, inputParameterNode: Optional[MedNCASegmentParameterNode]) -> None:
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

    def _checkCanApply(self, caller=None, event=None) -> None:
        """Parameters changed: sync the hand-bound combo boxes, say whether Segment can run."""
        node = self._parameterNode
        if node:
            self._selectComboBoxData(self.ui.modelComboBox, node.model)
            self._selectComboBoxData(self.ui.deviceComboBox, node.device, addIfMissing=True)
            problem = self.logic.inputProblem(node.inputVolume) or self._modelProblem(node.model)
        else:
            problem = _("No parameter node: reopen the module.")
        for widget in (self.ui.globalStepsSlider, self.ui.refinementStepsSlider, self.ui.downscaleSlider):
            widget.enabled = not (node and node.useTrainedSettings)
        self.panel.set_input_problem(problem)
        self._refresh()

    def _refresh(self) -> None:
        """Copy the panel's view-model onto the widgets."""
        view = self.panel.view()
        self.ui.segmentButton.text = view.button_text
        self.ui.segmentButton.enabled = view.button_enabled
        self.ui.segmentButton.toolTip = view.button_tooltip
        for section in (self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton,
                        self.ui.advancedCollapsibleButton):
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
            self._modelListProblem = "" if self._modelItems else _("No Med-NCA model is registered.")
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
                arguments = segment_arguments(self._parameterNode)
                check_device(arguments["device"])
                job = self.logic.prepare(self._parameterNode.inputVolume, **arguments)
                # Import torch and load the (small) model here, on the main thread: a bad weights
                # file is reported at once, and torch is not first imported from a worker thread.
                self.logic.loadModel(job)
                self.panel.start()
                self._runningJob = job
                logic = self.logic
                self._job.start(lambda progress, cancel: logic.compute(
                    job, scaled(progress, 0.0, COMPUTE_SHARE), cancel))
                self._pollTimer.start()
        except Exception as error:  # shown by tryWithErrorDisplay; the panel says it too
            self._runningJob = None
            self.panel.failed(str(error))

    def _onPoll(self) -> None:
        """Timer tick on the main thread: show progress; when computed, write the result."""
        status = self._job.poll()
        if self.panel.update(status) == FINISH:
            self._pollTimer.stop()
            self._finishRun(status.result)
        elif not self.panel.active:
            self._pollTimer.stop()
            self._runningJob = None
            if status.state is JobState.FAILED and status.error is not None:
                logging.error("Med-NCA segmentation failed:\n" + "".join(traceback.format_exception(status.error)))
        self._refresh()

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
            logging.error("Med-NCA segmentation could not be written:\n" + traceback.format_exc())
            self.panel.failed(str(error))
            return
        self.panel.finished(run_summary(result, job.runs))
        self._showResult(result, job)

    def _showResult(self, result, job) -> None:
        """Select the new segmentation as output (a new run replaces it) and show it in the views."""
        if self._parameterNode:
            self._parameterNode.outputSegmentation = result.segmentation
            if self._parameterNode.useTrainedSettings:  # show what the model used
                try:
                    for name, value in trained_settings(self.logic.trainedConfig(job)).items():
                        setattr(self._parameterNode, name, value)
                except Exception:  # informative only
                    logging.debug(traceback.format_exc())
        if result.uncertainty is not None:
            slicer.util.setSliceViewerLayers(background=job.input_volume, foreground=result.uncertainty,
                                             foregroundOpacity=0.4)
        else:
            slicer.util.setSliceViewerLayers(background=job.input_volume)

    def _abandonRun(self) -> None:
        """Stop a running segmentation without writing anything (scene closing, widget destroyed)."""
        if self.panel.active:
            if self.panel.cancel():
                self._job.cancel()


class MedNCASegmentLogic(ScriptedLoadableModuleLogic):
    """Batch API of the module, usable from Slicer's Python console without the panel.

    The implementation is ``MedNCASegmentLib.logic.MedNCASegmentLogic`` (also used headless);
    this class gives it Slicer's scene and parameter node, and gets PyTorch through the PyTorch
    extension on first use. The implementation is imported on first use, torch only when a
    model is loaded:

        logic = slicer.util.getModuleLogic("MedNCASegment")
        result = logic.segment(volumeNode, runs=10)  # blocking; see MedNCASegmentLib.logic
        print(result.segmentation.GetName(), result.quality, result.likely_failure)
    """

    def __init__(self, scene=None) -> None:
        """Called when the logic class is instantiated. ``scene``: default ``slicer.mrmlScene``."""
        ScriptedLoadableModuleLogic.__init__(self)
        self._scene = scene
        self._implementation = None
        self._inputCheck = None

    def getParameterNode(self):
        return MedNCASegmentParameterNode(super().getParameterNode())

    @property
    def implementation(self):
        """The shared ``MedNCASegmentLib.logic.MedNCASegmentLogic`` (models cached per device)."""
        if self._implementation is None:
            from MedNCASegmentLib.logic import MedNCASegmentLogic as Implementation

            self._implementation = Implementation(self._scene if self._scene is not None else slicer.mrmlScene)
        return self._implementation

    def inputProblem(self, volumeNode) -> str:
        """Why ``volumeNode`` cannot be segmented, or "" when it can (cached until the volume changes)."""
        image = volumeNode.GetImageData() if volumeNode is not None else None
        key = (volumeNode.GetID(), volumeNode.GetMTime(), image.GetMTime()) if image is not None else None
        if key is not None and self._inputCheck is not None and self._inputCheck[0] == key:
            return self._inputCheck[1]
        try:
            check_scalar_volume(volumeNode)
            problem = ""
        except InputVolumeError as error:
            problem = str(error)
        self._inputCheck = (key, problem) if key is not None else None
        return problem

    def models(self):
        """The Med-NCA models of the registry (``ModelEntry`` objects)."""
        return self.implementation.models()

    @staticmethod
    def ensureTorch(askConfirmation: bool = True) -> bool:
        """True when PyTorch can be used; installs it via the PyTorch extension after confirmation."""
        return ensure_torch(ask_confirmation=askConfirmation)

    def segment(self, inputVolume, **options):
        """Segment ``inputVolume``, blocking; options and result as ``MedNCASegmentLib.logic``'s ``segment``
        (model, globalSteps, refinementSteps, downscale, runs, device, roi, outputSegmentation,
        uncertaintyVolume, seed, progressCallback, cancelRequest)."""
        if not self.ensureTorch():
            raise RuntimeError(_("PyTorch is needed to segment; it was not installed."))
        return self.implementation.segment(inputVolume, **options)

    def prepare(self, inputVolume, **options):
        """Main thread: check inputs and copy them out of the scene (see ``MedNCASegmentLib.logic``)."""
        return self.implementation.prepare(inputVolume, **options)

    def compute(self, job, progressCallback=None, cancelRequest=None):
        """Any thread: run the model on the prepared arrays; touches no MRML."""
        return self.implementation.compute(job, progressCallback, cancelRequest)

    def finish(self, job, computed, progressCallback=None, cancelRequest=None):
        """Main thread: write the result into the scene, all or nothing."""
        return self.implementation.finish(job, computed, progressCallback, cancelRequest)

    def loadModel(self, job):
        """Load the job's model (imports torch; cached per model file and device)."""
        return self.implementation.load(job.entry, job.device)

    def trainedConfig(self, job):
        """The configuration (trained stage settings) of the job's model; cached after a run."""
        return self.loadModel(job).config


class MedNCASegmentTest(ScriptedLoadableModuleTest):
    """Self-test run by Slicer's test runner and the Reload & Test button.

    The segmentation tests use a real MRI: MSD Task04 hippocampus_001 when the environment variable
    EFFSEG_DATA names the data folder, else Slicer's MRHead sample with an ROI around the left
    hippocampus. They need the Med-NCA weights (Resources/Models) and PyTorch.
    """

    # Approximate RAS position (mm) of the left hippocampus in Slicer's MRHead sample, and an ROI
    # large enough to hold it with a generous margin.
    MRHEAD_LEFT_HIPPOCAMPUS_RAS = (-28.0, -18.0, -14.0)
    MRHEAD_ROI_SIZE = (56.0, 64.0, 56.0)
    TIMEOUT_S = 600

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_inputValidation()
        self.setUp()
        self.test_logicSegmentsRealVolume()
        self.setUp()
        self.test_panelRunsCancelsAndFinishes()

    def test_inputValidation(self) -> None:
        self.delayDisplay("Checking input validation")
        logic = MedNCASegmentLogic()
        self.assertIn("No input volume", logic.inputProblem(None))
        volume = slicer.util.addVolumeFromArray(np.random.default_rng(0).random((8, 9, 10), dtype=np.float32))
        self.assertEqual(logic.inputProblem(volume), "")
        singleSlice = slicer.util.addVolumeFromArray(np.zeros((1, 9, 10), dtype=np.float32))
        self.assertIn("single slice", logic.inputProblem(singleSlice))
        self.delayDisplay("Input validation test passed")

    def test_logicSegmentsRealVolume(self) -> None:
        self.delayDisplay("Segmenting a real MRI through the logic")
        volume, roi = self._loadRealVolume()
        logic = MedNCASegmentLogic()
        result = logic.segment(volume, roi=roi, runs=2)
        self._assertHippocampusSegments(logic, result.segmentation, volume)
        self.assertEqual(set(result.quality), set(self._segmentNames(logic)))
        self.delayDisplay("Logic test passed")

    def test_panelRunsCancelsAndFinishes(self) -> None:
        self.delayDisplay("Segmenting through the panel: background run, cancel, run again")
        volume, roi = self._loadRealVolume()
        slicer.util.selectModule("MedNCASegment")
        widget = slicer.modules.medncasegment.widgetRepresentation().self()
        parameters = widget.logic.getParameterNode()
        parameters.inputVolume = volume
        parameters.inputROI = roi
        parameters.outputSegmentation = None
        parameters.runs = 2.0
        segmentationsBefore = slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems()

        widget.onSegmentButton()  # Segment
        self.assertEqual(widget.panel.state, JobState.RUNNING, widget.ui.resultLabel.text)
        self.assertEqual(widget.ui.segmentButton.text, widget.panel.view().button_text)
        widget.onSegmentButton()  # Cancel
        self._waitWhileActive(widget)
        self.assertEqual(widget.panel.state, JobState.CANCELLED)
        self.assertEqual(slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems(),
                         segmentationsBefore, "a cancelled run must leave the scene as it was")

        widget.onSegmentButton()  # Segment again, to the end
        self._waitWhileActive(widget)
        self.assertEqual(widget.panel.state, JobState.FINISHED, widget.ui.resultLabel.text)
        self.assertIn("NQM", widget.ui.resultLabel.text)
        self._assertHippocampusSegments(widget.logic, parameters.outputSegmentation, volume)
        self.delayDisplay("Panel test passed")

    def _loadRealVolume(self):
        dataRoot = os.environ.get("EFFSEG_DATA")
        if dataRoot:
            path = os.path.join(dataRoot, "Task04_Hippocampus", "imagesTr", "hippocampus_001.nii.gz")
            if os.path.isfile(path):
                return slicer.util.loadVolume(path), None
        import SampleData

        volume = SampleData.downloadSample("MRHead")
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "left hippocampus")
        roi.SetCenter(list(self.MRHEAD_LEFT_HIPPOCAMPUS_RAS))
        roi.SetSize(*self.MRHEAD_ROI_SIZE)
        return volume, roi

    def _waitWhileActive(self, widget) -> None:
        deadline = time.monotonic() + self.TIMEOUT_S
        while widget.panel.active:
            self.assertLess(time.monotonic(), deadline, "segmentation did not end in time")
            slicer.app.processEvents()
            time.sleep(0.02)

    @staticmethod
    def _segmentNames(logic):
        return [spec.name for spec in logic.implementation.model_entry(None).segments]

    def _assertHippocampusSegments(self, logic, segmentationNode, volume) -> None:
        self.assertIsNotNone(segmentationNode)
        segmentation = segmentationNode.GetSegmentation()
        names = [segmentation.GetNthSegment(index).GetName() for index in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(names, self._segmentNames(logic))
        for index in range(segmentation.GetNumberOfSegments()):
            voxels = slicer.util.arrayFromSegmentBinaryLabelmap(
                segmentationNode, segmentation.GetNthSegmentID(index), volume)
            self.assertGreater(int(np.count_nonzero(voxels)), 0, f"segment '{names[index]}' is empty")
