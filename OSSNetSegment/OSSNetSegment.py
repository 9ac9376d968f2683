"""OSS-Net Segment: brain-tumour segmentation at any resolution with an occupancy network, on a CPU.

The Slicer module shell: module description, panel, batch logic and self-test. The algorithm
lives in OSSNetSegmentLib and the Slicer glue in EfficientSegmentationCommon; neither torch
nor the model is loaded when Slicer starts, only when a segmentation is run.

The panel's behaviour (button, progress, result text) is the Qt-free state machine
``EfficientSegmentationCommon.panel_state.SegmentPanel``, run by the widget part shared with
Med-NCA (``EfficientSegmentationCommon.segment_widget``); the OSS-Net specific rules are in
``OSSNetSegmentLib.panel``. All of these are tested headless; the widget below only wires them to Qt.
"""

import importlib.util
import os
import sys
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
from OSSNetSegmentLib.input_names import is_input  # noqa: E402
from OSSNetSegmentLib.panel import (  # noqa: E402
    INPUT_FIELDS,
    input_volumes,
    inputs_problem,
    resolution_text,
    run_summary,
    segment_arguments,
)

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
class OSSNetSegmentParameterNode:
    """Panel state, saved with the scene.

    firstInput, secondInput: the model's input volumes in its card's order (FLAIR, contrast T1).
    inputROI: optional markups ROI; only its box is segmented.
    model: registry id of the model (set from the model combo box, which is filled at run time).
    outputSegmentation: segmentation whose segments are replaced by the result (None: a new one).
    resolution: output resolution as a factor of the input's (2: twice as fine along each axis).
    chunkSize: points decoded at once (bounds the memory); a float because ctkSliderWidget binds floats.
    device: "cpu" or "cuda" (set from the device combo box, which lists what this computer has).
    """

    firstInput: vtkMRMLScalarVolumeNode
    secondInput: vtkMRMLScalarVolumeNode
    inputROI: vtkMRMLMarkupsROINode
    model: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    resolution: Annotated[float, WithinRange(0.25, 4.0)] = 1.0
    chunkSize: Annotated[float, WithinRange(1024, 131072)] = 8192.0
    device: str = "cpu"


class OSSNetSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, SegmentWidgetMixin):
    """The module panel: binds the .ui to the parameter node and runs segmentations in the background."""

    METHOD_TITLE = "OSS-Net"

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
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/OSSNetSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets; the .ui connects the top-level widget's mrmlSceneChanged
        # signal to each MRML widget's setMRMLScene slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = OSSNetSegmentLogic()

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
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module; a running segmentation goes on."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed: stop a running segmentation, write nothing."""
        self._abandonRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if not self.panel.active:
            self.panel.reset()
        if self.parent.isEntered:
            self.initializeParameterNode()
        self._refresh()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed; preselect inputs by name to save clicks."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.model:
            self._parameterNode.model = self._defaultModelId()
        volumes = list(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))
        for field, inputName in zip(INPUT_FIELDS, self._modelInputs()):
            if getattr(self._parameterNode, field) is None:
                match = next((v for v in volumes if is_input(v.GetName(), inputName)), None)
                if match is not None:
                    setattr(self._parameterNode, field, match)

    def setParameterNode(self, inputParameterNode: Optional[OSSNetSegmentParameterNode]) -> None:
        """Set and observe parameter node (the GUI follows its changes)."""
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

    def _modelInputs(self) -> tuple:
        """The selected model's inputs (modality names, in order)."""
        modelId = self._parameterNode.model if self._parameterNode else ""
        try:
            entry = next((e for e in self.logic.models() if e.id == modelId), None)
        except Exception:  # unreadable registry: the model problem says so
            entry = None
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
            for index, (label, selector) in enumerate(zip(labels, selectors)):
                label.visible = selector.visible = index < len(names)
                if index < len(names):
                    label.text = _("{modality} volume:").format(modality=names[index])
            volumes = input_volumes(node, len(names))
            problem = inputs_problem(volumes, names, self.logic.inputProblem) or self._modelProblem(node.model)
            self.ui.gridLabel.text = resolution_text(volumes[0], node.inputROI, len(names), node.resolution,
                                                     node.chunkSize)
        else:
            problem = _("No parameter node: reopen the module.")
        self.panel.set_input_problem(problem)
        self._refresh()

    # -- hooks of SegmentWidgetMixin ----------------------------------------------------------

    def _settingsSections(self) -> list:
        return [self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton, self.ui.advancedCollapsibleButton]

    def _prepareJob(self):
        volumes = input_volumes(self._parameterNode, len(self._modelInputs()))
        return self.logic.prepare(volumes, **segment_arguments(self._parameterNode))

    def _runSummary(self, result, job) -> RunSummary:
        return run_summary(result)

    def _showResult(self, result, job) -> None:
        """Select the new segmentation as output (a new run replaces it) and show it over the first input."""
        if self._parameterNode:
            self._parameterNode.outputSegmentation = result.segmentation
        slicer.util.setSliceViewerLayers(background=job.input_volumes[0])


class OSSNetSegmentLogic(ScriptedLoadableModuleLogic, LibraryLogicMixin):
    """Batch API of the module, usable from Slicer's Python console without the panel.

    The implementation is ``OSSNetSegmentLib.logic.OSSNetSegmentLogic`` (also used headless);
    this class gives it Slicer's scene and parameter node, and gets PyTorch through the PyTorch
    extension on first use (``EfficientSegmentationCommon.module_logic``):

        logic = slicer.util.getModuleLogic("OSSNetSegment")
        result = logic.segment([flairNode, t1cNode], resolution=2.0)  # blocking
        print(result.segmentation.GetName(), result.decoded_fraction, result.seconds)

    ``segment`` takes the options of ``OSSNetSegmentLib.logic``'s: model, resolution,
    outputSpacing, chunkSize, device, roi, outputSegmentation, progressCallback, cancelRequest.
    """

    def __init__(self, scene=None) -> None:
        """Called when the logic class is instantiated. ``scene``: default ``slicer.mrmlScene``."""
        ScriptedLoadableModuleLogic.__init__(self)
        self.initializeLibraryLogic(scene)

    def getParameterNode(self):
        return OSSNetSegmentParameterNode(super().getParameterNode())

    def _implementationClass(self):
        from OSSNetSegmentLib.logic import OSSNetSegmentLogic as Implementation

        return Implementation


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
        self.assertIn("No input volume", logic.inputProblem(None))
        volume = slicer.util.addVolumeFromArray(np.random.default_rng(0).random((8, 9, 10), dtype=np.float32))
        self.assertEqual(logic.inputProblem(volume), "")
        singleSlice = slicer.util.addVolumeFromArray(np.zeros((1, 9, 10), dtype=np.float32))
        self.assertIn("single slice", logic.inputProblem(singleSlice))
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
