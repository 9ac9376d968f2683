"""Reading model descriptions safely: registry files and model cards, checked against the schema.

A model's description comes from ``Models.json`` (shipped, or the user's own) or from the card
our training writes beside a weights file (``<weights>.json``). Either may be written by hand
and be malformed: invalid JSON, a segment without a colour, a zero spacing. Each entry is
checked against ``Resources/Models.schema.json`` (JSON Schema 2020-12) when it is read, with
the ``jsonschema`` package where it is installed (``pip install jsonschema``; the optional
extra ``schema``; Slicer does not bundle it) and otherwise with a minimal check of the fields
the code relies on. Every message names the file and the field (issue 11.10).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from .errors import ModelError
from .grids import orientation_direction

SCHEMA_PATH_PARTS = ("Resources", "Models.schema.json")
# Card keys (as our training writes them) that differ from the registry's.
CARD_KEYS = {"qualityWarningThreshold": "quality_warning_threshold",
             "structureSpreadWarningThreshold": "structure_spread_warning_threshold",
             "maxSpacingMm": "max_spacing_mm"}


def read_json(path: Path, what: str) -> object:
    """The JSON document in ``path``; ``ModelError`` naming the file (and the line) when it cannot
    be read or parsed. ``what`` says what the file is ("model registry", "model card")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"The {what} {path} cannot be read: {error}.") from error
    if not text.strip():
        raise ModelError(f"The {what} {path} is empty; it must hold a JSON object.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelError(f"The {what} {path} is not valid JSON: {error.msg} at line {error.lineno}, "
                         f"column {error.colno}.") from error


@lru_cache(maxsize=4)
def _entry_schema(schema_path: str) -> dict:
    """The schema of one registry entry (``models`` items) from the registry schema file, with the
    document's shared definitions (``$defs``) its references point to."""
    document = read_json(Path(schema_path), "model registry schema")
    return {**document["properties"]["models"]["items"], "$defs": document.get("$defs", {})}


def _field(path: Sequence) -> str:
    """``segments[0].color`` from a path of keys and indices."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(the entry itself)"


def entry_problems(values: object, schema_path: Path, key_names: Mapping[str, str] | None = None) -> list[str]:
    """What is wrong with one registry entry, as "field: problem" strings (empty when valid).

    ``key_names`` renames top-level fields in the messages (a card's own key names)."""
    rename = key_names or {}
    try:
        import jsonschema
    except ImportError:
        return _minimal_problems(values, rename)
    validator = jsonschema.Draft202012Validator(_entry_schema(str(schema_path)))
    problems = []
    for error in sorted(validator.iter_errors(values), key=lambda e: list(map(str, e.absolute_path))):
        path = list(error.absolute_path)
        if path and path[0] in rename:
            path[0] = rename[path[0]]
        if error.validator == "required" and isinstance(error.instance, Mapping):
            for name in error.validator_value:
                if name not in error.instance:
                    problems.append(f"{_field([*path, rename.get(name, name) if not path else name])}: missing")
        else:
            problems.append(f"{_field(path)}: {error.message}")
    return problems + _spacing_input_problems(values, rename)


def _spacing_input_problems(values: object, rename: Mapping[str, str]) -> list[str]:
    """``maxSpacingMm`` given per input must name the entry's inputs exactly (a key that matches
    none, e.g. "flair" for "FLAIR", would leave that input unchecked); the schema cannot say so."""
    limits = values.get("maxSpacingMm") if isinstance(values, Mapping) else None
    inputs = values.get("inputs") if isinstance(values, Mapping) else None
    if not isinstance(limits, Mapping) or not isinstance(inputs, list):
        return []
    return [f"{rename.get('maxSpacingMm', 'maxSpacingMm')}: {name!r} is not one of the inputs "
            f"({', '.join(map(str, inputs))})" for name in limits if name not in inputs]


def _minimal_problems(values: object, rename: Mapping[str, str]) -> list[str]:
    """Without ``jsonschema``: the fields the code relies on, present and of a usable kind."""
    if not isinstance(values, Mapping):
        return ["(the entry itself): not a JSON object"]
    problems = [f"{rename.get(name, name)}: missing" for name in ("id", "title", "method", "task", "inputs", "segments", "file")
                if name not in values]
    segments = values.get("segments", [])
    if not isinstance(segments, list) or not segments:
        problems.append("segments: must be a non-empty list")
        segments = []
    for index, segment in enumerate(segments):
        for name in ("name", "label", "color"):
            if not isinstance(segment, Mapping) or name not in segment:
                problems.append(f"segments[{index}].{name}: missing")
        color = segment.get("color") if isinstance(segment, Mapping) else None
        if color is not None and not (isinstance(color, list) and len(color) == 3
                                      and all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in color)):
            problems.append(f"segments[{index}].color: must be three numbers from 0 to 1")
    spacing = values.get("spacing", [1, 1, 1])
    if not (isinstance(spacing, list) and len(spacing) == 3
            and all(isinstance(s, (int, float)) and s > 0 for s in spacing)):
        problems.append("spacing: must be three numbers above 0 (mm)")
    orientation = values.get("orientation", "RAS")
    if not (isinstance(orientation, str) and orientation.isupper() and _is_orientation(orientation)):
        problems.append(f"orientation: {orientation!r} must be R or L, A or P, S or I, in that order (e.g. RAS, LPS)")
    limits = values.get("maxSpacingMm")
    positive = lambda value: isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0  # noqa: E731
    if limits is not None and not (positive(limits) or (isinstance(limits, Mapping) and limits
                                                         and all(positive(v) for v in limits.values()))):
        problems.append(f"{rename.get('maxSpacingMm', 'maxSpacingMm')}: must be a number above 0 (mm) or an object "
                        "of such numbers per input name")
    return problems + _spacing_input_problems(values, rename)


def _is_orientation(code: str) -> bool:
    """Whether ``grids.orientation_direction`` reads ``code`` (the schema's pattern ^[RL][AP][SI]$
    once upper case)."""
    try:
        orientation_direction(code)
    except ValueError:
        return False
    return True


def check_entry(values: object, source: Path, schema_path: Path, label: str,
                key_names: Mapping[str, str] | None = None) -> None:
    """Raise ``ModelError`` naming ``source`` (the file), ``label`` (which entry) and each bad field."""
    problems = entry_problems(values, schema_path, key_names)
    if problems:
        raise ModelError(f"{label} in {source} is malformed: " + "; ".join(problems) + ". Correct the file "
                         f"(the fields are described in {Path(*SCHEMA_PATH_PARTS)}).")
