"""Which model a run uses: a registry id, a model file of the user's, or the method's first model;
and each model loaded once per device.

Both modules' logics let the user name a model the same three ways, and a batch over many
volumes must not reload the weights for each; this is that shared part (``ModelChoice``), and
``RegistryLogic`` the start both library logics share. The loader is the method's own (it
imports torch), called on first use only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from .errors import InputVolumeError
from .registry import ModelEntry, ModelRegistry


class ModelChoice:
    """The models of one method (``"mednca"``, ``"ossnet"``) in a registry, and a cache of loaded ones."""

    def __init__(self, registry: ModelRegistry, method: str, method_title: str,
                 loader: Callable[[Path, str], object]) -> None:
        self.registry, self.method, self.method_title = registry, method, method_title
        self._loader = loader
        self._loaded: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()  # the panel loads on the main thread, batch code anywhere

    def entries(self) -> list[ModelEntry]:
        """The method's registered models, in registry order."""
        return [entry for entry in self.registry.entries if entry.method == self.method]

    def entry(self, model: str | None) -> ModelEntry:
        """A registry id, a path to a model file (``.pt``), or None for the method's first model."""
        if model is None:
            available = self.entries()
            if not available:
                raise InputVolumeError(f"No {self.method_title} model is registered; add one to Models.json or "
                                       "pass a model file.")
            return self.registry.get(available[0].id)
        if model.endswith(".pt"):
            if not Path(model).exists():
                raise InputVolumeError(f"Model file '{model}' does not exist.")
            return self.registry.entry_for_file(Path(model), method=self.method)
        entry = self.registry.get(model)
        if entry.method != self.method:
            raise InputVolumeError(f"Model '{model}' is a {entry.method} model, not a {self.method_title} model.")
        return entry

    def load(self, entry: ModelEntry, device: str = "cpu") -> object:
        """The loaded model of ``entry`` on ``device`` (loaded on first use, then cached)."""
        key = (str(entry.path), device)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = self._loader(entry.path, device)
            return self._loaded[key]


class RegistryLogic:
    """The start of a module's library logic: the scene it writes to, the model registry and the
    choice of model. Subclasses name their method and how a model file is loaded."""

    METHOD = ""  # the registry's "method" value
    METHOD_TITLE = ""  # how messages name it

    def __init__(self, scene=None, registry: ModelRegistry | None = None) -> None:
        from .scene import create_scene

        self.scene = scene if scene is not None else create_scene()
        self.registry = registry if registry is not None else ModelRegistry.default()
        self._choice = ModelChoice(self.registry, self.METHOD, self.METHOD_TITLE, self._load_network)

    @staticmethod
    def _load_network(path: Path, device: str) -> object:
        """The torch model in a weights file (imports torch)."""
        raise NotImplementedError

    def models(self) -> list[ModelEntry]:
        """The models of this method the user can pick from."""
        return self._choice.entries()

    def model_entry(self, model: str | None) -> ModelEntry:
        """A registry id, a path to a model file, or None for the method's first registered model."""
        return self._choice.entry(model)

    def load(self, entry: ModelEntry, device: str = "cpu"):
        """The torch model of a registry entry, loaded once per device. Imports torch on first use."""
        return self._choice.load(entry, device)
