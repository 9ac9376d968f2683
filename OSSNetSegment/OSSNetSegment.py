"""OSS-Net Segment: brain-tumour segmentation at any resolution with an occupancy network, on a CPU.

The Slicer module shell: module description, panel, batch logic and self-test. The algorithm
lives in OSSNetSegmentLib and the Slicer glue in EfficientSegmentationCommon; neither torch
nor the model is loaded when Slicer starts, only when a segmentation is run.

The panel's behaviour (button, progress, result text) is the Qt-free state machine
``EfficientSegmentationCommon.panel_state.SegmentPanel``, run by the widget part shared with
Med-NCA (``EfficientSegmentationCommon.segment_widget``); the OSS-Net specific rules are in
``OSSNetSegmentLib.panel``. All of these are tested headless; the widget below only wires them to Qt.
"""

import os
import sys

import numpy as np
import slicer
import vtk
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
from EfficientSegmentationCommon.registry import TRAINING_ORIENTATION  # noqa: E402
from EfficientSegmentationCommon.segment_widget import (  # noqa: E402
    SegmentWidgetMixin,
    checkInputProblems,
    segmentCancelThenSegment,
    settingsParameters,
)
from OSSNetSegmentLib.input_names import is_input  # noqa: E402
from OSSNetSegmentLib.panel import (  # noqa: E402
    INPUT_FIELDS,
    input_volumes,
    inputs_problem,
    panel_settings,
    resolution_text,
    run_summary,
)
from OSSNetSegmentLib.settings import OSSNetSettings  # noqa: E402

# Inputs of the shipped model, shown until the registry is read.
DEFAULT_INPUTS = ("FLAIR", "T1c")


class OSSNetSegment(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("OSS-Net Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["EfficientSegmentation contributors"]
        self.parent.helpText = _(
            "Segments the whole brain tumour (glioma: edema, necrosis, enhancing and non-enhancing tumour) "
            "in skull-stripped FLAIR and contrast-enhanced T1 MRI with OSS-Net, an occupancy network that "
            "decides for any point whether it lies inside the tumour. So the segmentation can be made at any "
            "resolution, finer than the scan included, with memory bounded by the points decoded at once, on "
            "an ordinary CPU. Select the two volumes (and optionally an ROI), drag the resolution slider to "
            "see the output grid and the memory it needs, then click Segment; the button turns into Cancel "
            "while the model runs, and Slicer stays usable. PyTorch is installed through the PyTorch "
            "extension on first use. See the extension's README for details."
        )
        self.parent.acknowledgementText = _(
            "OSS-Net: C. Reich, T. Prangemeier, O. Cetin and H. Koeppl, 'OSS-Net: Memory Efficient High "
            "Resolution Semantic Segmentation of 3D Medical Data', BMVC 2021. Brain-tumour data: BraTS "
            "(Menze et al., IEEE TMI 2015), CC BY-NC-SA 3.0."
        )


@parameterNodeWrapper
class OSSNetSegmentParameterNode(settingsParameters(OSSNetSettings)):
    """Panel state, saved with the scene: one parameter per option of ``OSSNetSettings`` that the
    panel shows (inherited, named in camelCase: model, resolution, chunkSize, device), and these.

    firstInput, secondInput: the model's input volumes in its card's order (FLAIR, contrast T1).
    inputROI: optional markups ROI; only its box is segmented.
    outputSegmentation: segmentation whose segments are replaced by the result (None: a new one).
    """

    firstInput: vtkMRMLScalarVolumeNode
    secondInput: vtkMRMLScalarVolumeNode
    inputROI: vtkMRMLMarkupsROINode
    outputSegmentation: vtkMRMLSegmentationNode


class OSSNetSegmentWidget(SegmentWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: binds the .ui to the parameter node and runs segmentations in the background
    (the lifecycle and the running part are shared with Med-NCA: ``EfficientSegmentationCommon.segment_widget``)."""

    METHOD_TITLE = "OSS-Net"
    UI_FILE = "UI/OSSNetSegment.ui"

    def _createLogic(self):
        return OSSNetSegmentLogic()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed; preselect inputs by name to save clicks."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.model:
            self._parameterNode.model = self._defaultModelId()
        volumes = list(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))
        for field, inputName in zip(INPUT_FIELDS, self._modelInputs(), strict=False):  # the model may take fewer
            if getattr(self._parameterNode, field) is None:
                match = next((v for v in volumes if is_input(v.GetName(), inputName)), None)
                if match is not None:
                    setattr(self._parameterNode, field, match)

    def _modelEntry(self):
        """The selected model's registry entry, or None (none selected, or an unreadable registry)."""
        modelId = self._parameterNode.model if self._parameterNode else ""
        try:
            return next((e for e in self.logic.models() if e.id == modelId), None)
        except Exception:  # unreadable registry: the model problem says so
            return None

    def _modelInputs(self) -> tuple:
        """The selected model's inputs (modality names, in order)."""
        entry = self._modelEntry()
        return tuple(entry.inputs) if entry is not None else DEFAULT_INPUTS

    def _checkCanApply(self, caller=None, event=None) -> None:
        """Parameters changed: sync the hand-bound combo boxes, label the inputs by modality, show
        the output grid and its memory, say whether Segment can run."""
        node = self._parameterNode
        if node:
            self._syncComboBoxes(node)
            names = self._modelInputs()
            labels = (self.ui.firstInputLabel, self.ui.secondInputLabel)
            selectors = (self.ui.firstInputSelector, self.ui.secondInputSelector)
            for index, (label, selector) in enumerate(zip(labels, selectors, strict=True)):
                label.visible = selector.visible = index < len(names)
                if index < len(names):
                    label.text = _("{modality} volume:").format(modality=names[index])
            volumes = input_volumes(node, len(names))
            problem = inputs_problem(volumes, names, self.logic.inputProblem) or self._modelProblem(node.model)
            try:
                entry = self._modelEntry()
                self.ui.gridLabel.text = resolution_text(volumes[0], node.inputROI, len(names), panel_settings(node),
                                                         entry.orientation if entry is not None
                                                         else TRAINING_ORIENTATION["ossnet"])
            except ValueError as error:  # a setting out of range (e.g. a scene saved by another version)
                self.ui.gridLabel.text = str(error)
        else:
            problem = _("No parameter node: reopen the module.")
        self.panel.set_input_problem(problem)
        self._refresh()

    # -- hooks of SegmentWidgetMixin ----------------------------------------------------------

    def _prepareJob(self):
        node = self._parameterNode
        volumes = input_volumes(node, len(self._modelInputs()))
        return self.logic.prepare(volumes, panel_settings(node), node.inputROI, node.outputSegmentation)

    def _runSummary(self, result, job) -> RunSummary:
        return run_summary(result)

    def _showResult(self, result, job) -> None:
        """Select the new segmentation as output (a new run replaces it) and show it over the first input."""
        if self._parameterNode:
            self._parameterNode.outputSegmentation = result.segmentation
        slicer.util.setSliceViewerLayers(background=job.input_volumes[0])


class OSSNetSegmentLogic(LibraryLogicMixin, ScriptedLoadableModuleLogic):
    """Batch API of the module, usable from Slicer's Python console without the panel.

    The implementation is ``OSSNetSegmentLib.logic.OSSNetSegmentLogic`` (also used headless);
    this class gives it Slicer's scene and parameter node, and gets PyTorch through the PyTorch
    extension on first use (``EfficientSegmentationCommon.module_logic``):

        logic = slicer.util.getModuleLogic("OSSNetSegment")
        result = logic.segment([flairNode, t1cNode], resolution=2.0)  # blocking
        print(result.segmentation.GetName(), result.decoded_fraction, result.seconds)

    ``segment``, ``prepare``, ``compute`` and ``finish`` are those of ``OSSNetSegmentLib.logic``
    (``LibraryLogicMixin``); the options are the fields of ``OSSNetSettings``.
    """

    PARAMETER_NODE_CLASS = OSSNetSegmentParameterNode
    IMPLEMENTATION = "OSSNetSegmentLib.logic.OSSNetSegmentLogic"


class OSSNetSegmentTest(ScriptedLoadableModuleTest):
    """Self-test run by Slicer's test runner and the Reload & Test button.

    The segmentation tests need a BraTS case with FLAIR and contrast T1 (the environment variable
    EFFSEG_DATA names the data folder holding BraTS_sample), the OSS-Net weights
    (Resources/Models) and PyTorch; without the data they say so and only check the inputs.
    """

    CASE = os.path.join("BraTS_sample", "brats_2013_pat0006_1")
    TIMEOUT_S = 900

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_inputValidation()
        if not self._caseFolder():
            self.delayDisplay("EFFSEG_DATA does not name the data folder with BraTS_sample: segmentation tests skipped")
            return
        self.setUp()
        self.test_logicSegmentsRealCase()
        self.setUp()
        self.test_panelRunsCancelsAndFinishes()

    def test_inputValidation(self) -> None:
        self.delayDisplay("Checking input validation")
        logic = OSSNetSegmentLogic()
        volume = checkInputProblems(self, logic)
        self.assertIn("T1c", inputs_problem([volume, None], ["FLAIR", "T1c"], logic.inputProblem))
        with self.assertRaises(ValueError):
            logic.prepare([volume])  # one of the two inputs missing
        self.delayDisplay("Input validation test passed")

    def test_logicSegmentsRealCase(self) -> None:
        self.delayDisplay("Segmenting a real brain-tumour MRI through the logic")
        flair, t1c, roi = self._loadCase()
        result = OSSNetSegmentLogic().segment([flair, t1c], roi=roi, resolution=2.0)
        self._assertTumourSegment(result.segmentation, flair)
        self.assertEqual(result.geometry.spacing, (0.5, 0.5, 0.5))
        self.assertLess(result.decoded_fraction, 0.5)
        self.delayDisplay("Logic test passed")

    def test_panelRunsCancelsAndFinishes(self) -> None:
        self.delayDisplay("Segmenting through the panel: background run, cancel, run again")
        flair, t1c, roi = self._loadCase()
        slicer.util.selectModule("OSSNetSegment")
        widget = slicer.modules.ossnetsegment.widgetRepresentation().self()
        parameters = widget.logic.getParameterNode()
        parameters.firstInput, parameters.secondInput, parameters.inputROI = flair, t1c, roi
        parameters.outputSegmentation = None
        parameters.resolution = 1.0
        self.assertIn("voxels", widget.ui.gridLabel.text)

        segmentCancelThenSegment(self, widget, self.TIMEOUT_S)
        self.assertIn("decoded", widget.ui.resultLabel.text)
        self._assertTumourSegment(parameters.outputSegmentation, flair)
        self.delayDisplay("Panel test passed")

    def _caseFolder(self) -> str:
        folder = os.path.join(os.environ.get("EFFSEG_DATA", ""), self.CASE)
        return folder if os.environ.get("EFFSEG_DATA") and os.path.isdir(folder) else ""

    def _loadCase(self):
        """FLAIR, contrast T1 and an ROI of 80 mm around the tumour (a quick run)."""
        folder = self._caseFolder()
        flair = slicer.util.loadVolume(os.path.join(folder, "Flair_subtrMeanDivStd.nii.gz"))
        t1c = slicer.util.loadVolume(os.path.join(folder, "T1c_subtrMeanDivStd.nii.gz"))
        labels = slicer.util.loadVolume(os.path.join(folder, "OTMultiClass.nii.gz"))
        kji = np.argwhere(slicer.util.arrayFromVolume(labels) > 0).mean(axis=0)
        ijkToRas = vtk.vtkMatrix4x4()
        labels.GetIJKToRASMatrix(ijkToRas)
        centre = ijkToRas.MultiplyPoint([kji[2], kji[1], kji[0], 1.0])[:3]
        slicer.mrmlScene.RemoveNode(labels)
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "tumour")
        roi.SetCenter(list(centre))
        roi.SetSize(80.0, 80.0, 80.0)
        return flair, t1c, roi

    def _assertTumourSegment(self, segmentationNode, volume) -> None:
        self.assertIsNotNone(segmentationNode)
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertEqual(segmentation.GetNthSegment(0).GetName(), "whole tumour")
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentation.GetNthSegmentID(0), volume)
        self.assertGreater(int(np.count_nonzero(voxels)), 0, "the tumour segment is empty")
