"""Whole-head Med-NCA: both hippocampi of a head in one call, their volumes, and the boxes as ROI nodes.

Real data: the MNI152 2009a template that nilearn ships (a whole brain at 1 mm), stored RAS,
LPS and left-handed (LAS), and the Med-NCA hippocampus model.
"""

from __future__ import annotations

import numpy as np
from EfficientSegmentationCommon.grids import crop_to_roi
from MedNCASegmentLib.box_nodes import SIDE_ATTRIBUTE, box_from_roi, box_to_roi
from MedNCASegmentLib.localization import HippocampusBox
from MedNCASegmentLib.wholehead import asymmetry_index
from scipy.spatial.transform import Rotation


def test_asymmetry_index_definition():
    assert asymmetry_index(3000.0, 3000.0) == 0.0
    assert asymmetry_index(3300.0, 2700.0) == 20.0  # (L-R)/((L+R)/2) x 100
    assert asymmetry_index(2700.0, 3300.0) == -20.0
    assert np.isnan(asymmetry_index(0.0, 0.0))


def test_box_round_trips_through_an_roi_node(scene):
    axes = Rotation.from_euler("xyz", (20, -10, 25), degrees=True).as_matrix()
    box = HippocampusBox("left", np.array([-26.0, -21.0, -10.0]), axes, np.array([40.0, 50.0, 50.0]))
    roi = box_to_roi(scene, box, "left hippocampus box")
    assert roi.GetAttribute(SIDE_ATTRIBUTE) == "left"
    back = box_from_roi("left", roi)
    np.testing.assert_allclose(back.centre_ras, box.centre_ras, atol=1e-9)
    np.testing.assert_allclose(back.axes, axes, atol=1e-9)
    np.testing.assert_allclose(back.size, box.size, atol=1e-9)
    # The crop of an ROI (the single-structure path) covers the rotated box's corners.
    from EfficientSegmentationCommon.geometry import VolumeGeometry

    geometry = VolumeGeometry.compose((120, 120, 120), (1.0, 1.0, 1.0), origin=(-80.0, -80.0, -60.0))
    slices, cropped = crop_to_roi(geometry, roi)
    low, high = cropped.bounds_ras()
    assert np.all(low <= box.corners_ras.min(axis=0) + 0.5) and np.all(high >= box.corners_ras.max(axis=0) - 0.5)
    # Moving the node moves the box the next run uses.
    roi.SetCenter(-20.0, -21.0, -10.0)
    np.testing.assert_allclose(box_from_roi("left", roi).centre_ras, (-20.0, -21.0, -10.0), atol=1e-9)
