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
import traceback
from typing import Annotated, Optional

import numpy as np
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

from EfficientSegmentationCommon.module_logic import LibraryLogicMixin  # noqa: E402
from EfficientSegmentationCommon.panel_state import RunSummary  # noqa: E402
from EfficientSegmentationCommon.segment_widget import SegmentWidgetMixin, segmentCancelThenSegment  # noqa: E402
from MedNCASegmentLib.panel import (  # noqa: E402
    run_summary,
    segment_arguments,
    trained_settings,
)


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


class MedNCASegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, SegmentWidgetMixin):
    """The module panel: binds the .ui to the parameter node and runs segmentations in the background
    (the running part is shared with OSS-Net: ``EfficientSegmentationCommon.segment_widget``)."""

    METHOD_TITLE = "Med-NCA"

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
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedNCASegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets; the .ui connects the top-level widget's mrmlSceneChanged
        # signal to each MRML widget's setMRMLScene slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedNCASegmentLogic()

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
        if not self._parameterNode.model:
            self._parameterNode.model = self._defaultModelId()

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
            self._syncComboBoxes(node)
            problem = self.logic.inputProblem(node.inputVolume) or self._modelProblem(node.model)
        else:
            problem = _("No parameter node: reopen the module.")
        for widget in (self.ui.globalStepsSlider, self.ui.refinementStepsSlider, self.ui.downscaleSlider):
            widget.enabled = not (node and node.useTrainedSettings)
        self.panel.set_input_problem(problem)
        self._refresh()

    # -- hooks of SegmentWidgetMixin ----------------------------------------------------------

    def _settingsSections(self) -> list:
        return [self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton, self.ui.advancedCollapsibleButton]

    def _prepareJob(self):
        return self.logic.prepare(self._parameterNode.inputVolume, **segment_arguments(self._parameterNode))

    def _runSummary(self, result, job) -> RunSummary:
        return run_summary(result, job.runs)

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


class MedNCASegmentLogic(ScriptedLoadableModuleLogic, LibraryLogicMixin):
    """Batch API of the module, usable from Slicer's Python console without the panel.

    The implementation is ``MedNCASegmentLib.logic.MedNCASegmentLogic`` (also used headless);
    this class gives it Slicer's scene and parameter node, and gets PyTorch through the PyTorch
    extension on first use (``EfficientSegmentationCommon.module_logic``). The implementation is
    imported on first use, torch only when a model is loaded:

        logic = slicer.util.getModuleLogic("MedNCASegment")
        result = logic.segment(volumeNode, runs=10)  # blocking; see MedNCASegmentLib.logic
        print(result.segmentation.GetName(), result.quality, result.likely_failure)

    ``segment`` takes the options of ``MedNCASegmentLib.logic``'s: model, globalSteps,
    refinementSteps, downscale, runs, device, roi, outputSegmentation, uncertaintyVolume, seed,
    keepLargestComponent, progressCallback, cancelRequest.
    """

    def __init__(self, scene=None) -> None:
        """Called when the logic class is instantiated. ``scene``: default ``slicer.mrmlScene``."""
        ScriptedLoadableModuleLogic.__init__(self)
        self.initializeLibraryLogic(scene)

    def getParameterNode(self):
        return MedNCASegmentParameterNode(super().getParameterNode())

    def _implementationClass(self):
        from MedNCASegmentLib.logic import MedNCASegmentLogic as Implementation

        return Implementation

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

        segmentCancelThenSegment(self, widget, self.TIMEOUT_S)
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
