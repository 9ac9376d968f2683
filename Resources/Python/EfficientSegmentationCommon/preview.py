"""A live preview of a running segmentation: labels from the worker thread, shown by the main thread.

The model runs in a worker thread (``background.BackgroundJob``) and may not touch MRML; it
hands its current labels to :meth:`LivePreview.put`, which keeps only the latest (a slow main
thread skips frames instead of queueing them). The panel's poll timer, on the main thread,
calls :meth:`LivePreview.show`, which writes the latest labels into a temporary segmentation
node, and :meth:`LivePreview.remove` when the run ends, is cancelled or fails, so no preview
node outlives the run. Writing a label map into a segmentation takes the main thread some
milliseconds, so :meth:`show` skips (keeping the labels for later) while writing has taken more
than a share of the time since the preview began: the run keeps its pace on a busy machine.
Plain Python over an MRML scene, so it is tested headless.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from .geometry import VolumeGeometry
from .registry import SegmentSpec
from .segmentation_output import write_labels_to_segmentation


class LivePreview:
    """One run's preview segmentation node, named ``<volume> <method> preview``, not saved with the scene.

    Args:
        scene: the MRML scene.
        reference_volume: the input volume node (the preview sits beside it).
        geometry: the grid of the labels :meth:`put` receives (the input volume's).
        segments: the model's segments (names, label values, colours).
        method_title: "Med-NCA": used in the node's name.
        share: at most this share of the time since the preview began goes to writing it.
    """

    def __init__(self, scene, reference_volume, geometry: VolumeGeometry, segments: Sequence[SegmentSpec],
                 method_title: str, share: float = 0.03) -> None:
        self.scene, self.reference_volume, self.geometry = scene, reference_volume, geometry
        self.segments = list(segments)
        self.name = f"{reference_volume.GetName()} {method_title} preview"
        self.node = None
        self.shown = 0  # label maps written so far (for tests and diagnostics)
        self.share = share
        self._started = time.perf_counter()
        self._spent = 0.0  # seconds spent writing
        self._lock = threading.Lock()
        self._latest: np.ndarray | None = None

    def put(self, labels: np.ndarray) -> None:
        """Keep ``labels`` (KJI on ``geometry``) as the latest; any thread. The array is not copied:
        the caller hands over a fresh one."""
        with self._lock:
            self._latest = labels

    def show(self, force: bool = False) -> bool:
        """Write the latest labels, if new ones came, into the preview node (created on first use),
        unless writing has taken more than ``share`` of the time so far (``force``: write anyway);
        main thread only. Returns True when it wrote."""
        started = time.perf_counter()
        if not force and self.shown and self._spent > self.share * (started - self._started):
            return False
        with self._lock:
            labels, self._latest = self._latest, None
        if labels is None:
            return False
        if self.node is not None and self.scene.GetNodeByID(self.node.GetID()) is None:
            self.node = None  # the user deleted it: make a new one
        self.node = write_labels_to_segmentation(self.scene, labels, self.geometry, self.reference_volume,
                                                 self.segments, output=self.node, name=self.name)
        self.node.SetSaveWithScene(False)
        self.shown += 1
        self._spent += time.perf_counter() - started
        return True

    def remove(self) -> None:
        """Remove the preview node, its display nodes and its subject hierarchy item from the scene
        (if there) and drop pending labels; main thread only."""
        with self._lock:
            self._latest = None
        node, self.node = self.node, None
        if node is None or self.scene.GetNodeByID(node.GetID()) is None:
            return
        displays = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        hierarchy = self.scene.GetSubjectHierarchyNode()
        item = hierarchy.GetItemByDataNode(node) if hierarchy is not None else 0
        if item:
            hierarchy.RemoveItem(item, False, False)
        self.scene.RemoveNode(node)
        for display in displays:  # a headless scene keeps them otherwise
            if display is not None and self.scene.GetNodeByID(display.GetID()) is not None:
                self.scene.RemoveNode(display)
