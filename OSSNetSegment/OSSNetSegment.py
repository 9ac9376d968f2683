"""OSS-Net Segment: memory-efficient 3D segmentation with an occupancy network, on a CPU.

The Slicer module shell: module description, panel, batch logic and self-test. The algorithm
lives in OSSNetSegmentLib and the Slicer glue in EfficientSegmentationCommon; neither torch
nor the model is loaded when Slicer starts, only when a segmentation is run.
"""

import importlib.util
import os
import sys

import numpy as np
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
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


def _addSharedPackageToPath() -> None:
    """Make EfficientSegmentationCommon importable when running from the source tree.

    A built extension installs the package beside this file. When this folder is added to
    Slicer's additional module paths instead, the package is in ../Resources/Python.
    """
    sourceTreePath = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "Resources", "Python"))
    if importlib.util.find_spec("EfficientSegmentationCommon") is None and os.path.isdir(sourceTreePath):
        sys.path.append(sourceTreePath)


_addSharedPackageToPath()

from EfficientSegmentationCommon.errors import InputVolumeError  # noqa: E402
from EfficientSegmentationCommon.volume_arrays import check_scalar_volume  # noqa: E402


class OSSNetSegment(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("OSS-Net Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["EfficientSegmentation contributors"]
        self.parent.helpText = _(
            "Segments 3D medical images with OSS-Net, an occupancy network that decides for any point "
            "whether it lies inside a structure, so a volume is segmented at full resolution with little "
            "memory, on an ordinary CPU. This version selects and checks the input volume; the "
            "segmentation itself arrives with the OSS-Net model release. See the extension's README."
        )
        self.parent.acknowledgementText = _(
            "OSS-Net: C. Reich, T. Prangemeier, O. Cetin and H. Koeppl, 'OSS-Net: Memory Efficient High "
            "Resolution Semantic Segmentation of 3D Medical Data', BMVC 2021."
        )


@parameterNodeWrapper
class OSSNetSegmentParameterNode:
    """Panel state, saved with the scene.

    inputVolume: the volume to segment.
    outputSegmentation: segmentation whose segments are replaced by the result (None: a new one).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode


class OSSNetSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: binds the .ui to the parameter node and shows whether the input is usable."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/OSSNetSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = OSSNetSegmentLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Use the module's parameter node, preselecting the first volume to save a click."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        """Bind the GUI to ``inputParameterNode`` (None unbinds, e.g. while the scene closes)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateStatus)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateStatus)
            self._updateStatus()

    def _updateStatus(self, caller=None, event=None) -> None:
        problem = self.logic.inputProblem(self._parameterNode.inputVolume)
        self.ui.statusLabel.text = problem or _(
            "The input volume can be segmented. Segmentation arrives with the OSS-Net model release."
        )


class OSSNetSegmentLogic(ScriptedLoadableModuleLogic):
    """Batch API of the module, usable from Slicer's Python console without the panel."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return OSSNetSegmentParameterNode(super().getParameterNode())

    def inputProblem(self, volumeNode) -> str:
        """Why ``volumeNode`` cannot be segmented, or "" when it can."""
        try:
            check_scalar_volume(volumeNode)
        except InputVolumeError as error:
            return str(error)
        return ""


class OSSNetSegmentTest(ScriptedLoadableModuleTest):
    """Self-test run by Slicer's test runner and the Reload & Test button."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_inputValidation()

    def test_inputValidation(self) -> None:
        self.delayDisplay("Checking input validation")
        logic = OSSNetSegmentLogic()
        self.assertIn("No input volume", logic.inputProblem(None))
        volume = slicer.util.addVolumeFromArray(np.random.default_rng(0).random((8, 9, 10), dtype=np.float32))
        self.assertEqual(logic.inputProblem(volume), "")
        singleSlice = slicer.util.addVolumeFromArray(np.zeros((1, 9, 10), dtype=np.float32))
        self.assertIn("single slice", logic.inputProblem(singleSlice))
        self.delayDisplay("Input validation test passed")
