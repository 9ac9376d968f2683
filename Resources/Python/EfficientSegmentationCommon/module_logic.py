"""What both modules' Slicer logic classes share: they hand the work to their library logic
(``<Module>Lib.logic``, also used headless), imported on first use so that Slicer starts without
torch, and get PyTorch through the PyTorch extension when a run needs it.

The module's ``ScriptedLoadableModuleLogic`` subclass mixes this in and names its library
logic in ``_implementationClass``.
"""

from .errors import InputVolumeError
from .torch_setup import ensure_torch
from .volume_arrays import check_scalar_volume


class LibraryLogicMixin:
    """Delegation to the library logic, and the panel's cached input check."""

    def initializeLibraryLogic(self, scene=None) -> None:
        """Call from ``__init__``. ``scene``: default ``slicer.mrmlScene``."""
        self._scene = scene
        self._implementation = None
        self._inputChecks = {}

    def _implementationClass(self):
        """The library logic class (imported here, on first use)."""
        raise NotImplementedError

    @property
    def implementation(self):
        """The library logic (models cached per file and device)."""
        if self._implementation is None:
            import slicer

            scene = self._scene if self._scene is not None else slicer.mrmlScene
            self._implementation = self._implementationClass()(scene)
        return self._implementation

    def inputProblem(self, volumeNode) -> str:
        """Why ``volumeNode`` cannot be segmented, or "" when it can (cached until the volume changes,
        since the panel asks on every parameter change)."""
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

    def segment(self, *inputs, **options):
        """Segment, blocking; arguments and result as the library logic's ``segment``."""
        if not self.ensureTorch():
            raise RuntimeError("PyTorch is needed to segment; it was not installed.")
        return self.implementation.segment(*inputs, **options)

    def prepare(self, *inputs, **options):
        """Main thread: check inputs and copy them out of the scene."""
        return self.implementation.prepare(*inputs, **options)

    def compute(self, job, progressCallback=None, cancelRequest=None):
        """Any thread: run the model on the prepared arrays; touches no MRML."""
        return self.implementation.compute(job, progressCallback, cancelRequest)

    def finish(self, job, computed, progressCallback=None, cancelRequest=None):
        """Main thread: write the result into the scene, all or nothing."""
        return self.implementation.finish(job, computed, progressCallback, cancelRequest)

    def loadModel(self, job):
        """Load the job's model (imports torch; cached per model file and device)."""
        return self.implementation.load(job.entry, job.device)
