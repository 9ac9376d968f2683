"""The model registry: which trained models exist, what they segment and where their weights are.

``Resources/Models.json`` (schema: ``Resources/Models.schema.json``) lists every shipped model
with the facts a user needs to choose one (task, inputs, segments with names, colours and
terminology, version, license, training data, validation metrics). Users add models of their
own in a ``Models.json`` of the same form in the folder named by ``EFFSEG_USER_MODELS`` (default
``~/.EfficientSegmentation``), or simply pass a model file.

Weights are looked up relative to the extension's root: ``<root>/<module>/Resources/<file>`` in
a source checkout, ``<root>/Resources/<file>`` where Slicer installed the modules side by side.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError
from .segmentation_output import SegmentSpec

PACKAGE_DIR = Path(__file__).resolve().parent
# Installed: <qt-scripted-modules>/EfficientSegmentationCommon; source: <repo>/Resources/Python/...
SEARCH_ROOTS = (PACKAGE_DIR.parent, PACKAGE_DIR.parents[2])


@dataclass(frozen=True)
class ModelEntry:
    """One model as the registry describes it, with its weights file resolved."""

    id: str
    title: str
    method: str
    task: str
    inputs: tuple[str, ...]
    segments: tuple[SegmentSpec, ...]
    path: Path
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    version: str = ""
    license: str = ""
    training_data: str = ""
    metrics: dict = field(default_factory=dict, hash=False, compare=False)
    description: str = ""
    # Quality score (e.g. Med-NCA's NQM) above which a result is flagged as a likely failure;
    # chosen on the model's validation split, recorded in its card. None: the model has none.
    quality_warning_threshold: float | None = None
    # A model of one of a pair of structures (one hippocampus) used on both sides at once: its
    # labels 1..K on the left, K+1..2K on the right, with names, colours and terminology.
    bilateral_segments: tuple[SegmentSpec, ...] = ()


def _segments(values: Sequence[dict]) -> tuple[SegmentSpec, ...]:
    return tuple(SegmentSpec(s["name"], tuple(s["color"]), int(s["label"]), s.get("terminology")) for s in values)


def _resolve(file: str, module: str | None, base: Path) -> Path:
    candidates = [base / file]
    for root in SEARCH_ROOTS:
        if module:
            candidates.append(root / module / "Resources" / file)
        candidates.append(root / "Resources" / file)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return candidates[0]


def _entry(values: dict, base: Path) -> ModelEntry:
    return ModelEntry(
        id=values["id"], title=values["title"], method=values["method"], task=values["task"],
        inputs=tuple(values["inputs"]), segments=_segments(values["segments"]),
        path=_resolve(values["file"], values.get("module"), base),
        spacing=tuple(values.get("spacing", (1.0, 1.0, 1.0))), version=values.get("version", ""),
        license=values.get("license", ""), training_data=values.get("trainingData", ""),
        metrics=values.get("metrics", {}), description=values.get("description", ""),
        quality_warning_threshold=values.get("qualityWarningThreshold"),
        bilateral_segments=_segments(values.get("bilateralSegments", ())))


class ModelRegistry:
    """The models from one or more ``Models.json`` files; later files may add models, not replace ids."""

    def __init__(self, entries: Sequence[ModelEntry]) -> None:
        self.entries = list(entries)

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> "ModelRegistry":
        entries: list[ModelEntry] = []
        for path in paths:
            try:
                document = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise ValueError(f"Model registry {path} cannot be read: {error}") from error
            for values in document.get("models", []):
                entry = _entry(values, Path(path).parent)
                if any(existing.id == entry.id for existing in entries):
                    raise ValueError(f"Model registry {path} repeats the model id '{entry.id}'.")
                entries.append(entry)
        return cls(entries)

    @classmethod
    def default(cls) -> "ModelRegistry":
        """The shipped registry plus the user's own, if there is one."""
        shipped = next((root / "Resources" / "Models.json" for root in SEARCH_ROOTS
                        if (root / "Resources" / "Models.json").exists()), None)
        if shipped is None:
            raise FileNotFoundError("The extension's Resources/Models.json was not found; the installation is incomplete.")
        user = Path(os.environ.get("EFFSEG_USER_MODELS", Path.home() / ".EfficientSegmentation")) / "Models.json"
        return cls.from_files([shipped, user] if user.exists() else [shipped])

    def get(self, model_id: str) -> ModelEntry:
        for entry in self.entries:
            if entry.id == model_id:
                if not entry.path.exists():
                    raise ModelError(f"The weights of model '{model_id}' are missing: {entry.path}")
                return entry
        known = ", ".join(entry.id for entry in self.entries) or "none"
        raise ModelError(f"Unknown model '{model_id}'. Registered models: {known}.")

    def entry_for_file(self, path: Path, method: str) -> ModelEntry:
        """An entry for a model file of the user's: its registered entry if one points at it, else
        one described by the model card beside it (``<file>.json``, as our training writes)."""
        path = Path(path).resolve()
        for entry in self.entries:
            if entry.path.resolve() == path:
                return entry
        card_path = path.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.exists() else {}
        if "segments" not in card:
            raise ModelError(f"Model file {path} has no registry entry and no model card ({card_path.name}) "
                                   "naming its segments; add it to your Models.json.")
        return _entry({"id": path.stem, "title": path.stem, "method": method, "task": card.get("task", ""),
                       "inputs": card.get("inputs", []), "segments": card["segments"], "file": str(path),
                       "spacing": card.get("spacing", (1.0, 1.0, 1.0)),
                       "qualityWarningThreshold": card.get("quality_warning_threshold")}, path.parent)
