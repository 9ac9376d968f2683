"""The start both library logics share: the scene they write to, and which model a run uses.

Users name a model three ways: a registry id, a model file of their own (``.pt`` with its card
beside it), or nothing (the method's first registered model). A batch over many volumes must
not reload the weights for each, so each model is loaded once per device and cached. The
loader is the method's own (it imports torch), called on first use only.
"""

from __future__ import annotations

import threading
from pathlib import Path

from .errors import ModelError
from .registry import ModelEntry, ModelRegistry


class RegistryLogic:
    """A module's library logic start: scene, registry, model choice and the cache of loaded models.

    Subclasses name their method (``METHOD``, the registry's ``"method"`` value, and
    ``METHOD_TITLE`` for messages) and how a weights file is loaded (``_load_network``).
    """

    METHOD = ""
    METHOD_TITLE = ""

    def __init__(self, scene=None, registry: ModelRegistry | None = None, closed_surface: bool = True) -> None:
        """``closed_surface``: results get Slicer's closed surface (the 3D view); the commands,
        which only save files, turn it off (``segmentation_output.write_labels_to_segmentation``)."""
        from .scene import create_scene

        self.scene = scene if scene is not None else create_scene()
        self.closed_surface = closed_surface
        self.registry = registry if registry is not None else ModelRegistry.default()
        self._loaded: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()  # the panel loads on the main thread, batch code anywhere

    @staticmethod
    def _load_network(path: Path, device: str) -> object:
        """The torch model in a weights file (imports torch)."""
        raise NotImplementedError

    def models(self) -> list[ModelEntry]:
        """The models of this method the user can pick from, in registry order."""
        return [entry for entry in self.registry.entries if entry.method == self.METHOD]

    def model_entry(self, model: str | None) -> ModelEntry:
        """A registry id, a path to a model file (``.pt``), or None for the method's first model.

        Raises ModelError naming the model when it is unknown, of another method, or missing.
        """
        if model is None:
            available = self.models()
            if not available:
                raise ModelError(f"No {self.METHOD_TITLE} model is registered; add one to Models.json or "
                                 "pass a model file.")
            return self.registry.get(available[0].id)
        if model.endswith(".pt"):
            if not Path(model).exists():
                raise ModelError(f"Model file '{model}' does not exist.")
            return self.registry.entry_for_file(Path(model), method=self.METHOD)
        if model not in {entry.id for entry in self.registry.entries}:  # name this method's models only
            known = ", ".join(entry.id for entry in self.models()) or "none"
            raise ModelError(f"Unknown model '{model}'. {self.METHOD_TITLE} models: {known}. "
                             "Give one of these, or a model file (.pt).")
        entry = self.registry.get(model)
        if entry.method != self.METHOD:
            raise ModelError(f"Model '{model}' is not {self._a_method} model; {self.METHOD_TITLE} models: "
                             f"{', '.join(e.id for e in self.models()) or 'none'}. Give one of these, or a model file (.pt).")
        return entry

    @property
    def _a_method(self) -> str:
        """The method's title with its article: "a Med-NCA", "an OSS-Net"."""
        return f"{'an' if self.METHOD_TITLE[0] in 'AEIOU' else 'a'} {self.METHOD_TITLE}"

    def load(self, entry: ModelEntry, device: str = "cpu") -> object:
        """The torch model of ``entry`` on ``device``: loaded on first use, then cached.

        Raises ModelError naming the weights file when it cannot be loaded (empty, damaged, or
        not a model of this method), whatever the loader raised."""
        key = (str(entry.path), device)
        with self._lock:
            if key not in self._loaded:
                try:
                    self._loaded[key] = self._load_network(entry.path, device)
                except Exception as error:  # torch raises many kinds for a bad file
                    raise ModelError(self._load_failure(entry.path, error)) from error
            return self._loaded[key]

    def _load_failure(self, path: Path, error: Exception) -> str:
        """The message for a weights file that could not be loaded."""
        if path.is_file() and path.stat().st_size == 0:
            return f"Model file {path} cannot be loaded: it is empty. Copy the model file again."
        detail = str(error).strip() or type(error).__name__
        return (f"Model file {path} cannot be loaded: it is not {self._a_method} model file, or it is damaged "
                f"({detail}). Use a model file written by the {self.METHOD_TITLE} training.")
