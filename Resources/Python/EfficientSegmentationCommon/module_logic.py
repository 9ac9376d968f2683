"""What both modules' Slicer logic classes share: they hand the work to their library logic
(``<Module>Lib.logic``, also used headless), imported on first use so that Slicer starts without
torch, and get PyTorch through the PyTorch extension when a run needs it.

The module's logic class derives from this mixin and ``ScriptedLoadableModuleLogic`` (in that
order) and names its parameter node class and its library logic (a dotted path, imported on
first use).
"""

import importlib

from .errors import InputVolumeError
from .input_files import check_source_files
from .torch_setup import ensure_torch
from .volume_arrays import check_scalar_volume


class LibraryLogicMixin:
    """Delegation to the library logic, the parameter node, and the panel's cached input check."""

    PARAMETER_NODE_CLASS = None  # the module's parameterNodeWrapper class
    IMPLEMENTATION = ""  # "<Module>Lib.logic.<Class>": the library logic, imported on first use

    def __init__(self, scene=None) -> None:
        """``scene``: default ``slicer.mrmlScene``."""
        from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

        ScriptedLoadableModuleLogic.__init__(self)
        self._scene = scene
        self._implementation = None
        self._inputChecks = {}

    def getParameterNode(self):
        """The module's parameter node, wrapped in its typed ``parameterNodeWrapper`` class."""
        from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

        return self.PARAMETER_NODE_CLASS(ScriptedLoadableModuleLogic.getParameterNode(self))

    def _implementationClass(self):
        """The library logic class (imported here, on first use: it brings numpy, scipy and the model code)."""
        module, name = self.IMPLEMENTATION.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)

    @property
    def implementation(self):
        """The library logic (models cached per file and device)."""
        if self._implementation is None:
            import slicer

            scene = self._scene if self._scene is not None else slicer.mrmlScene
            self._implementation = self._implementationClass()(scene)
        return self._implementation

    def inputProblem(self, volumeNode) -> str:
        """Why ``volumeNode`` cannot be segmented, or "" when it can, also from the file it was read
        from (cached until the volume changes, since the panel asks on every parameter change)."""
        image = volumeNode.GetImageData() if volumeNode is not None else None
        if image is None:
            try:
                check_scalar_volume(volumeNode)
            except InputVolumeError as error:
                return str(error)
            return ""
        key = (volumeNode.GetMTime(), image.GetMTime())
        cached = self._inputChecks.get(volumeNode.GetID())
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            check_scalar_volume(volumeNode)
            check_source_files([volumeNode])  # the file it was read from: damaged, no orientation, NaN
            problem = ""
        except InputVolumeError as error:
            problem = str(error)
        self._inputChecks[volumeNode.GetID()] = (key, problem)
        return problem

    def models(self):
        """The registered models of this module's method (``ModelEntry`` objects)."""
        return self.implementation.models()

    @staticmethod
    def ensureTorch(askConfirmation: bool = True) -> bool:
        """True when PyTorch can be used; installs it via the PyTorch extension after confirmation."""
        return ensure_torch(ask_confirmation=askConfirmation)

    def segment(self, inputs, settings=None, roi=None, outputSegmentation=None, progressCallback=None,
                cancelRequest=None, **options):
        """Segment, blocking; arguments and result as the library logic's ``segment``: the input
        volume(s), the method's settings object (or its options as keywords), an optional ROI and
        output segmentation, a progress callback and a cancel request."""
        if not self.ensureTorch():
            raise RuntimeError("PyTorch is needed to segment; it was not installed.")
        return self.implementation.segment(inputs, settings, roi, outputSegmentation, progressCallback,
                                           cancelRequest, **options)

    def prepare(self, inputs, settings=None, roi=None, outputSegmentation=None):
        """Main thread: check the inputs and copy them out of the scene, with the method's settings."""
        return self.implementation.prepare(inputs, settings, roi, outputSegmentation)

    def compute(self, job, progressCallback=None, cancelRequest=None, **callbacks):
        """Any thread: run the model on the prepared arrays; touches no MRML. ``callbacks``: the
        method's own, e.g. Med-NCA's ``previewCallback`` (the live preview)."""
        return self.implementation.compute(job, progressCallback, cancelRequest, **callbacks)

    def finish(self, job, computed, progressCallback=None, cancelRequest=None):
        """Main thread: write the result into the scene, all or nothing."""
        return self.implementation.finish(job, computed, progressCallback, cancelRequest)

    def loadModel(self, job):
        """Load the job's model (imports torch; cached per model file and device)."""
        return self.implementation.load(job.entry, job.settings.device)
