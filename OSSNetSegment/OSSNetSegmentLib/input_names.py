"""Recognising which MRI sequence a file or volume holds from its name (FLAIR, contrast T1).

The CLI picks a case folder's files by name and the panel preselects the input volumes the
same way, so one table serves both. Matching is by lower-case fragment of the name's parts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Name fragments of each model input (lower case); BraTS names contrast T1 't1c', 't1ce' or 't1gd'.
INPUT_NAME_PATTERNS = {"flair": ("flair",), "t1c": ("t1c", "t1ce", "t1gd")}
# Parts of a name that mark labels and masks, which are never inputs.
NOT_INPUT_PARTS = ("label", "labels", "seg", "segmentation", "mask", "brainmask")


def name_parts(name: str) -> list[str]:
    """Lower-case parts of a file or node name split at separators, extensions removed."""
    stem = re.sub(r"\.(nii\.gz|nii|nrrd|nhdr|mha|mhd|seg\.nrrd)$", "", name.lower())
    return [part for part in re.split(r"[^a-z0-9]+", stem) if part]


def is_input(name: str, input_name: str) -> bool:
    """True when ``name`` (a file or volume name) looks like the model input ``input_name``."""
    parts = name_parts(name)
    if any(part in NOT_INPUT_PARTS for part in parts):
        return False
    fragments = INPUT_NAME_PATTERNS.get(input_name.lower(), (input_name.lower(),))
    return any(part.startswith(fragment) for part in parts for fragment in fragments)


def fragments_of(input_name: str) -> Sequence[str]:
    """The name fragments recognised for a model input (for messages)."""
    return INPUT_NAME_PATTERNS.get(input_name.lower(), (input_name.lower(),))
