"""Progress reporting, cancellation, and all-or-nothing changes to the scene.

Segmenting on a CPU takes long enough that users must see progress and be able to stop.
Stopping (or failing) half-way must leave the scene exactly as it was: no stray temporary
volumes, no half-filled output segmentation. The work checks a ``CancelRequest`` between
steps and runs inside a ``SceneTransaction``, which undoes its scene changes on any error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from .errors import CancelledError

ProgressCallback = Callable[[float, str], None]
"""Called with the fraction done (0..1, never decreasing) and a short status message."""


class CancelRequest:
    """A flag the GUI (any thread) sets and the worker polls between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the work to stop at its next check."""
        self._event.set()

    @property
    def is_set(self) -> bool:
        """True once ``cancel`` has been called."""
        return self._event.is_set()

    def raise_if_set(self) -> None:
        """Raise ``CancelledError`` if cancellation was asked for; call between steps."""
        if self._event.is_set():
            raise CancelledError("Segmentation was cancelled; the scene is left as it was.")


def scaled(callback: ProgressCallback | None, start: float, end: float) -> ProgressCallback:
    """A callback for one stage that maps its 0..1 onto ``start..end`` of the whole job.

    Fractions are clamped to 0..1 and the reported value never decreases, so a progress bar
    fed from several stages (or a stage that restarts a loop) never jumps backwards.
    """
    highest = start

    def report(fraction: float, message: str) -> None:
        nonlocal highest
        highest = max(highest, start + (end - start) * min(max(fraction, 0.0), 1.0))
        if callback is not None:
            callback(highest, message)

    return report


class SceneTransaction:
    """Context manager that undoes its scene changes when the block raises (cancel included).

    Nodes added to the scene inside the block are removed again, with their subject
    hierarchy items, and nodes named in ``protect`` (typically an existing output
    segmentation that the job overwrites) get their content back. On success everything
    is kept. The exception always propagates.
    """

    def __init__(self, scene, protect: Sequence = ()) -> None:
        self._scene = scene
        self._protect = list(protect)
        self._ids_before: set[str] = set()
        self._backups: list[tuple[object, object]] = []

    def __enter__(self) -> SceneTransaction:
        self._ids_before = set(self._node_ids())
        self._backups = []
        for node in self._protect:
            backup = node.NewInstance()
            backup.CopyContent(node, True)
            self._backups.append((node, backup))
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is not None:
            self.rollback()
        return False

    @property
    def added_nodes(self) -> list:
        """Nodes added since the block started, in the order they were added."""
        return [self._scene.GetNodeByID(node_id) for node_id in self._node_ids() if node_id not in self._ids_before]

    def rollback(self) -> None:
        """Remove the added nodes (newest first) and restore the protected ones."""
        hierarchy = self._scene.GetSubjectHierarchyNode()
        for node in reversed(self.added_nodes):
            if node is None or self._scene.GetNodeByID(node.GetID()) is None:
                continue  # already removed together with a node removed before it
            item = hierarchy.GetItemByDataNode(node)
            if item:
                hierarchy.RemoveItem(item, False, False)
            self._scene.RemoveNode(node)
        for node, backup in self._backups:
            node.CopyContent(backup, True)

    def _node_ids(self) -> list[str]:
        """IDs of the scene's nodes in scene order (which is the order they were added)."""
        return [self._scene.GetNthNode(index).GetID() for index in range(self._scene.GetNumberOfNodes())]
