"""Exceptions that the modules show to the user as they are."""

import os


class InputVolumeError(ValueError):
    """The input cannot be segmented; the message names the node or file and the problem.

    A ValueError subclass so that generic callers treating bad arguments keep working,
    while the GUI can catch this one and show its message without a traceback.
    """


class OutputError(OSError):
    """A result could not be written (a full disk, no permission, a folder in the way); the
    message names the result's path, not the hidden file it was being written to first."""


class CancelledError(Exception):
    """The user cancelled a running job.

    Raised from inside the work (see ``progress.CancelRequest.raise_if_set``) so that
    ``progress.SceneTransaction`` can undo what the job had already added to the scene.
    """


def check_the_path(path: str) -> str:
    """What to do about a path that is not there: check it, and where a relative path was looked for."""
    return "Check the path" + ("" if os.path.isabs(path) else f", relative to {os.getcwd()}") + "."


def describe_node(node) -> str:
    """How error messages name a node: quoted name (or ID), or say that there is none."""
    if node is None:
        return "(no node selected)"
    return f"'{node.GetName() or node.GetID() or node.GetClassName()}'"


class ModelError(ValueError):
    """A model cannot be used: unknown id, missing or damaged weights, a malformed model card.

    Kept apart from ``InputVolumeError`` so that a message blames the model (and names its file
    and the field at fault), not the user's volume.
    """
