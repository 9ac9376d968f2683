"""Med-NCA Segment: hippocampus segmentation with a neural cellular automaton, on a CPU.

The Slicer module shell: module description, panel, batch logic and self-test. The algorithm
lives in MedNCASegmentLib and the Slicer glue in EfficientSegmentationCommon; neither torch
nor the model is loaded when Slicer starts, only when a segmentation is run.

The panel's behaviour (button, progress, result text) is the Qt-free state machine
``EfficientSegmentationCommon.panel_state.SegmentPanel``; the Med-NCA specific rules are in
``MedNCASegmentLib.panel``. Both are tested headless; the widget below only wires them to Qt.
"""

import logging
import os
import sys
import traceback

import numpy as np
import slicer
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


# EfficientSegmentationCommon: installed beside this file by a build, or in ../Resources/Python when
# this folder is added to Slicer's module paths from a source tree (appended: an installed copy wins).
sys.path.append(os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "Resources", "Python")))

from EfficientSegmentationCommon.module_logic import LibraryLogicMixin  # noqa: E402
from EfficientSegmentationCommon.panel_state import RunSummary  # noqa: E402
from EfficientSegmentationCommon.preview import LivePreview  # noqa: E402
from EfficientSegmentationCommon.segment_widget import (  # noqa: E402
    SegmentWidgetMixin,
    checkInputProblems,
    segmentCancelThenSegment,
    settingsParameters,
)
from MedNCASegmentLib.panel import (  # noqa: E402
    panel_boxes,
    panel_settings,
    run_summary,
    trained_settings,
)
from MedNCASegmentLib.settings import MedNCASettings  # noqa: E402


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
            "and click Segment: on a whole-head scan both hippocampi are located (shown as the left and "
            "right boxes, which you can adjust and segment again) and segmented, and their volumes are "
            "shown; a crop around one hippocampus, or an ROI, is segmented as one hippocampus. The button "
            "turns into Cancel while the model runs, and Slicer stays usable. After the run, the quality "
            "score (NQM) and the spread inside the structure tell how much the stochastic runs disagreed: "
            "a high spread inside the structure, shown in red, signals a likely failure. PyTorch is installed through the PyTorch extension on first use. "
            "See the extension's README for details."
        )
        self.parent.acknowledgementText = _(
            "Med-NCA: J. Kalkhof and A. Mukhopadhyay, 'Med-NCA: Robust and Lightweight Segmentation "
            "with Neural Cellular Automata', IPMI 2023. Hippocampus data: Medical Segmentation "
            "Decathlon, Task04 (Simpson et al. 2019; Antonelli et al. 2022), CC-BY-SA 4.0."
        )


@parameterNodeWrapper
class MedNCASegmentParameterNode(settingsParameters(MedNCASettings)):
    """Panel state, saved with the scene: one parameter per option of ``MedNCASettings`` (inherited,
    named in camelCase: model, globalSteps, refinementSteps, downscale, runs, seed, device,
    keepLargestComponent, uncertaintyVolume, mirror, preview), and these.

    inputVolume: the volume to segment.
    inputROI: optional markups ROI; only the voxels inside it are segmented (one hippocampus).
    outputSegmentation: segmentation whose segments are replaced by the result (None: a new one).
    useTrainedSettings: leave globalSteps, refinementSteps and downscale to the model.
    leftBox, rightBox: whole-head mode: the boxes of the last run, as the user may have adjusted
        them; with both set, the next run segments in them instead of locating (see panel_boxes).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputROI: vtkMRMLMarkupsROINode
    outputSegmentation: vtkMRMLSegmentationNode
    useTrainedSettings: bool = True
    leftBox: vtkMRMLMarkupsROINode
    rightBox: vtkMRMLMarkupsROINode


class MedNCASegmentWidget(SegmentWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: binds the .ui to the parameter node and runs segmentations in the background
    (the lifecycle and the running part are shared with OSS-Net: ``EfficientSegmentationCommon.segment_widget``)."""

    METHOD_TITLE = "Med-NCA"
    UI_FILE = "UI/MedNCASegment.ui"

    def _createLogic(self):
        return MedNCASegmentLogic()

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

    def _prepareJob(self):
        node = self._parameterNode
        return self.logic.prepare(node.inputVolume, panel_settings(node), node.inputROI, node.outputSegmentation,
                                  boxes=panel_boxes(node))

    def _runSummary(self, result, job) -> RunSummary:
        return run_summary(result)

    def _createPreview(self, job):
        """Watch the automaton grow in a temporary segmentation when the panel's preview box is checked
        (one hippocampus: the whole-head path segments two boxes and shows the result at the end)."""
        if not job.settings.preview or job.mode == "head":
            return None
        return LivePreview(slicer.mrmlScene, job.input_volume, job.full_geometry, job.entry.segments, self.METHOD_TITLE)

    def _showResult(self, result, job) -> None:
        """Select the new segmentation as output (a new run replaces it) and show it in the views."""
        if self._parameterNode:
            self._parameterNode.outputSegmentation = result.segmentation
            if result.boxes:  # whole head: show the boxes used, to adjust and segment again
                self._parameterNode.leftBox = result.boxes["left"]
                self._parameterNode.rightBox = result.boxes["right"]
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


class MedNCASegmentLogic(LibraryLogicMixin, ScriptedLoadableModuleLogic):
    """Batch API of the module, usable from Slicer's Python console without the panel.

    The implementation is ``MedNCASegmentLib.logic.MedNCASegmentLogic`` (also used headless);
    this class gives it Slicer's scene and parameter node, and gets PyTorch through the PyTorch
    extension on first use (``EfficientSegmentationCommon.module_logic``). The implementation is
    imported on first use, torch only when a model is loaded:

        logic = slicer.util.getModuleLogic("MedNCASegment")
        result = logic.segment(volumeNode, runs=10)  # blocking; see MedNCASegmentLib.logic
        print(result.segmentation.GetName(), result.quality, result.likely_failure)

    ``segment``, ``prepare``, ``compute`` and ``finish`` are those of ``MedNCASegmentLib.logic``
    (``LibraryLogicMixin``); the options are the fields of ``MedNCASettings``.
    """

    PARAMETER_NODE_CLASS = MedNCASegmentParameterNode
    IMPLEMENTATION = "MedNCASegmentLib.logic.MedNCASegmentLogic"

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
        checkInputProblems(self, logic)
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
