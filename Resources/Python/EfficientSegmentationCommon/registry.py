"""The model registry: which trained models exist, what they segment and where their weights are.

``Resources/Models.json`` (schema: ``Resources/Models.schema.json``) lists every shipped model
with the facts a user needs to choose one (task, inputs, segments with names, colours and
terminology, version, license, training data, validation metrics). Users add models of their
own in a ``Models.json`` of the same form in the folder named by ``EFFSEG_USER_MODELS`` (default
``~/.EfficientSegmentation``), or simply pass a model file.

Every entry and card is checked against the schema when it is read (``model_cards``). A fault in
the shipped registry is ours and raises ``ModelError``; a fault in the user's registry (the
whole file, or one entry) must not stop the shipped models: the bad part is skipped and a
warning naming the file and the field is kept in ``ModelRegistry.warnings``, which the commands
print and the panels log.

Weights are looked up relative to the extension's root: ``<root>/<module>/Resources/<file>`` in
a source checkout, ``<root>/Resources/<file>`` where Slicer installed the modules side by side.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError
from .model_cards import CARD_KEYS, check_entry, read_json
from .segmentation_output import SegmentSpec

PACKAGE_DIR = Path(__file__).resolve().parent
# Installed: <qt-scripted-modules>/EfficientSegmentationCommon; source: <repo>/Resources/Python/...
SEARCH_ROOTS = (PACKAGE_DIR.parent, PACKAGE_DIR.parents[2])
SCHEMA_NAME = "Models.schema.json"


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
    # The voxel order of the model's training data (``grids.orientation_direction``: "RAS",
    # "LPS", ...): inputs are read on an axis-aligned grid of this orientation, so the same scan
    # stored in another voxel order gives the same result.
    orientation: str = "RAS"
    version: str = ""
    license: str = ""
    training_data: str = ""
    metrics: dict = field(default_factory=dict, hash=False, compare=False)
    description: str = ""
    # Quality score (e.g. Med-NCA's NQM) above which a result is flagged as a likely failure when
    # the model has no structure-spread threshold (else NQM is shown, not judged); chosen on the
    # model's validation split, recorded in its card. None: the model has none.
    quality_warning_threshold: float | None = None
    # Mean spread of the runs inside the segmented structure above which a result is flagged too
    # (Med-NCA; chosen on the clean and corrupted validation inputs, recorded in its card).
    structure_spread_warning_threshold: float | None = None
    # A model of one of a pair of structures (one hippocampus) used on both sides at once: its
    # labels 1..K on the left, K+1..2K on the right, with names, colours and terminology.
    bilateral_segments: tuple[SegmentSpec, ...] = ()
    # What the model card requires of every input (``input_checks.REQUIREMENTS``), checked per run.
    input_requirements: tuple[str, ...] = ()
    # The coarsest voxel spacing (mm, along any axis) at which the model's results were measured
    # good, for every input or per input name; a coarser input (thick slices) is segmented with a
    # warning. None (or an input not named): not measured.
    max_spacing_mm: float | dict[str, float] | None = None


# The voxel order of the data each method's training script reads as stored (MSD hippocampus
# files are RAS, BraTS files LPS): the orientation of an entry or card that does not state one
# (cards written before they recorded it).
TRAINING_ORIENTATION = {"mednca": "RAS", "ossnet": "LPS"}


def _segments(values: Sequence[dict]) -> tuple[SegmentSpec, ...]:
    return tuple(SegmentSpec(s["name"], tuple(s["color"]), int(s["label"]), s.get("terminology"),
                             tuple(float(v) for v in s["plausibleVolumeMm3"]) if s.get("plausibleVolumeMm3") else None)
                 for s in values)


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
        spacing=tuple(values.get("spacing", (1.0, 1.0, 1.0))),
        orientation=values.get("orientation", TRAINING_ORIENTATION.get(values["method"], "RAS")),
        version=values.get("version", ""),
        license=values.get("license", ""), training_data=values.get("trainingData", ""),
        metrics=values.get("metrics", {}), description=values.get("description", ""),
        quality_warning_threshold=values.get("qualityWarningThreshold"),
        structure_spread_warning_threshold=values.get("structureSpreadWarningThreshold"),
        bilateral_segments=_segments(values.get("bilateralSegments", ())),
        input_requirements=tuple(values.get("inputRequirements", ())),
        max_spacing_mm=values.get("maxSpacingMm"))


def schema_path() -> Path:
    """``Resources/Models.schema.json`` of this installation (beside the shipped registry)."""
    for root in SEARCH_ROOTS:
        if (root / "Resources" / SCHEMA_NAME).exists():
            return root / "Resources" / SCHEMA_NAME
    raise ModelError(f"The extension's Resources/{SCHEMA_NAME} was not found; the installation is incomplete.")


class ModelRegistry:
    """The models from one or more ``Models.json`` files; later files may add models, not replace ids."""

    def __init__(self, entries: Sequence[ModelEntry], warnings: Sequence[str] = ()) -> None:
        self.entries = list(entries)
        self.warnings = list(warnings)  # user registry parts that were skipped, and why

    @classmethod
    def from_files(cls, paths: Sequence[Path], user_paths: Sequence[Path] = ()) -> "ModelRegistry":
        """The models of the registry files ``paths`` (a fault raises ``ModelError``) and of the
        user's ``user_paths`` (a faulty file or entry is skipped with a warning)."""
        registry = cls([])
        for path in paths:
            registry._add_file(Path(path), strict=True)
        for path in user_paths:
            registry._add_file(Path(path), strict=False)
        return registry

    def _add_file(self, path: Path, strict: bool) -> None:
        schema = schema_path()
        try:
            document = read_json(path, "model registry")
            if not isinstance(document, dict) or not isinstance(document.get("models"), list):
                raise ModelError(f"The model registry {path} is malformed: models: missing (it must be a JSON "
                                 'object with a list "models").')
        except ModelError as error:
            if strict:
                raise
            self.warnings.append(f"{error} Its models are skipped; the shipped models are still available.")
            return
        for index, values in enumerate(document["models"]):
            label = f"Model '{values['id']}'" if isinstance(values, dict) and isinstance(values.get("id"), str) \
                else f"Model entry {index + 1}"
            try:
                check_entry(values, path, schema, label)
                entry = _entry(values, path.parent)
                if any(existing.id == entry.id for existing in self.entries):
                    raise ModelError(f"{label} in {path} repeats the id of a model already registered; "
                                     "give it another id.")
            except ModelError as error:
                if strict:
                    raise
                self.warnings.append(f"{error} It is skipped.")
                continue
            self.entries.append(entry)

    @classmethod
    def default(cls) -> "ModelRegistry":
        """The shipped registry plus the user's own, if there is one."""
        shipped = next((root / "Resources" / "Models.json" for root in SEARCH_ROOTS
                        if (root / "Resources" / "Models.json").exists()), None)
        if shipped is None:
            raise FileNotFoundError("The extension's Resources/Models.json was not found; the installation is incomplete.")
        user = Path(os.environ.get("EFFSEG_USER_MODELS", Path.home() / ".EfficientSegmentation")) / "Models.json"
        return cls.from_files([shipped], [user] if user.exists() else [])

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
        if not card_path.exists():
            raise ModelError(f"Model file {path} has no registry entry and no model card ({card_path.name}) "
                             "naming its segments; add it to your Models.json or put its card beside it.")
        card = read_json(card_path, "model card")
        if not isinstance(card, dict):
            raise ModelError(f"The model card {card_path} is malformed: it must be a JSON object.")
        model_id = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-._") or "model"
        values = {"id": model_id, "title": path.stem, "method": method, "task": card.get("task", ""),
                  "inputs": card.get("inputs", []), "segments": card.get("segments"), "file": str(path)}
        for key in ("spacing", "orientation", "qualityWarningThreshold", "structureSpreadWarningThreshold",
                    "inputRequirements", "maxSpacingMm"):
            card_key = CARD_KEYS.get(key, key)
            if card.get(card_key) is not None:
                values[key] = card[card_key]
        if values["segments"] is None:
            del values["segments"]
        check_entry(values, card_path, schema_path(), "The model card", key_names=CARD_KEYS)
        return _entry(values, path.parent)
