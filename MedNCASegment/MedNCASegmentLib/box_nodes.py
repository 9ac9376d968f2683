"""Located hippocampus boxes as markups ROI nodes, and back: the user sees where each side was
searched, can move or resize a box in the views, and segment again with the boxes as placed."""

from __future__ import annotations

import numpy as np
from vtkmodules.vtkCommonMath import vtkMatrix4x4

from .localization import HippocampusBox

# Attributes that mark an ROI node as a side's box (value: "left" or "right") and name the
# volume node (its ID) it was located in.
SIDE_ATTRIBUTE = "MedNCA.HippocampusSide"
VOLUME_ATTRIBUTE = "MedNCA.HippocampusBoxVolume"
COLORS = {"left": (0.95, 0.55, 0.15), "right": (0.2, 0.6, 0.95)}


def box_to_roi(scene, box: HippocampusBox, name: str, roi=None, volume=None):
    """Show ``box`` as a ``vtkMRMLMarkupsROINode`` (centre, size and rotation), in ``roi`` if given
    (updated in place) or in a new node named ``name``, marked as located in ``volume`` (a node)
    if given; returns the node."""
    if roi is None:
        roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
        roi.CreateDefaultDisplayNodes()
        display = roi.GetDisplayNode()
        if display is not None:
            display.SetSelectedColor(*COLORS[box.side])
    matrix = vtkMatrix4x4()
    for row in range(3):
        for column in range(3):
            matrix.SetElement(row, column, float(box.axes[row, column]))
        matrix.SetElement(row, 3, float(box.centre_ras[row]))
    roi.SetAndObserveObjectToNodeMatrix(matrix)
    roi.SetSize(*(float(s) for s in box.size))
    roi.SetAttribute(SIDE_ATTRIBUTE, box.side)
    if volume is not None:
        roi.SetAttribute(VOLUME_ATTRIBUTE, volume.GetID())
    return roi


def located_in_other_volume(roi, volume) -> bool:
    """Whether ``roi`` is a box located in another volume than ``volume`` (a box the user made,
    without the mark, is not)."""
    located = roi.GetAttribute(VOLUME_ATTRIBUTE)
    return bool(located) and (volume is None or located != volume.GetID())


def box_from_roi(side: str, roi) -> HippocampusBox:
    """The box an ROI node shows now, as the user placed it (its parent transforms included)."""
    matrix = roi.GetObjectToWorldMatrix()
    object_to_world = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    scales = np.linalg.norm(object_to_world[:3, :3], axis=0)  # 1 unless a parent transform scales
    return HippocampusBox(side, object_to_world[:3, 3].copy(), object_to_world[:3, :3] / scales,
                          np.asarray(roi.GetSize(), dtype=np.float64) * scales)
