"""The OSS-Net panel's rules, checked without Slicer's GUI (``OSSNetSegmentLib.panel`` and
``resolution``): which inputs are missing, the parameter node turned into the logic's arguments,
the line under the resolution slider (grid and memory), the result line, and choosing inputs by
name. The .ui and module-file checks are in test_module_panels.py; the shared state machine's in
test_mednca_panel.py.
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import slicer

from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.panel_state import WARNING_STYLE, summary_text
from EfficientSegmentationCommon.segmentation_output import write_scalar_volume
from OSSNetSegmentLib.input_names import is_input
from OSSNetSegmentLib.logic import OSSNetResult
from OSSNetSegmentLib.panel import INPUT_FIELDS, input_volumes, inputs_problem, panel_settings, resolution_text, run_summary
from OSSNetSegmentLib.resolution import MAX_OUTPUT_VOXELS, memory_estimate, plan_output_grid
from OSSNetSegmentLib.settings import OSSNetSettings

BRATS_SHAPE = (155, 240, 240)  # KJI


def parameters(**values) -> types.SimpleNamespace:
    defaults = {"firstInput": None, "secondInput": None, "inputROI": None, "model": "", "outputSegmentation": None,
                "resolution": 1.0, "chunkSize": 8192.0, "device": "cpu"}
    return types.SimpleNamespace(**{**defaults, **values})


def volume(scene, name: str, shape=(8, 9, 10), spacing=(1.0, 1.0, 1.0)):
    node = write_scalar_volume(scene, np.zeros(shape, np.float32), VolumeGeometry.compose(shape, spacing), name)
    return node


def test_a_missing_input_is_named_by_its_modality(scene):
    flair = volume(scene, "flair")
    assert inputs_problem([flair, None], ["FLAIR", "T1c"], lambda v: "") == "Select the T1c volume."
    assert inputs_problem([None, flair], ["FLAIR", "T1c"], lambda v: "") == "Select the FLAIR volume."
    assert "different volume" in inputs_problem([flair, flair], ["FLAIR", "T1c"], lambda v: "")
    t1c = volume(scene, "t1c")
    assert inputs_problem([flair, t1c], ["FLAIR", "T1c"], lambda v: "") == ""
    problem = inputs_problem([flair, t1c], ["FLAIR", "T1c"], lambda v: "bad" if v is t1c else "")
    assert problem == "T1c: bad"


def test_input_volumes_follow_the_model_card_order(scene):
    flair, t1c = volume(scene, "flair"), volume(scene, "t1c")
    node = parameters(firstInput=flair, secondInput=t1c)
    assert input_volumes(node, 2) == [flair, t1c]
    assert input_volumes(node, 1) == [flair]
    with pytest.raises(ValueError, match="input selectors"):
        input_volumes(node, len(INPUT_FIELDS) + 1)


def test_panel_settings_have_whole_chunk_sizes_and_default_to_the_first_model():
    settings = panel_settings(parameters(model="ossnet-brats-wholetumour", resolution=2.0, chunkSize=4096.4))
    assert settings == OSSNetSettings(model="ossnet-brats-wholetumour", resolution=2.0, chunk_size=4096)
    assert panel_settings(parameters(model="", device="")) == OSSNetSettings()  # the first registered model


def test_the_planned_output_grid_is_the_one_the_result_gets():
    spacing = (0.9375, 0.9375, 1.5)
    geometry = VolumeGeometry.compose(BRATS_SHAPE, spacing)
    for resolution in (0.25, 0.5, 1.0, 1.5, 2.0, 4.0):
        plan = plan_output_grid(geometry, 2, OSSNetSettings(resolution=resolution), "RAS")
        assert np.allclose(plan.output.spacing, np.asarray(spacing) / resolution)
        assert plan.output == geometry.with_spacing(np.asarray(spacing) / resolution)
        assert plan.model_grid == geometry and not plan.resampled
    assert plan_output_grid(geometry, 2, OSSNetSettings(), "RAS").output == geometry
    assert plan_output_grid(geometry, 2, OSSNetSettings(output_spacing=0.5), "RAS").output.spacing == (0.5, 0.5, 0.5)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="resolution must be"):
            OSSNetSettings(resolution=bad)
    with pytest.raises(ValueError, match="not both"):
        OSSNetSettings(resolution=2.0, output_spacing=0.5)


def test_an_oblique_input_is_planned_on_the_axis_aligned_grid_the_run_uses():
    """The estimate the panel shows is made on the grid the model will read, not the input's."""
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    oblique = VolumeGeometry.compose(BRATS_SHAPE, (1.0, 1.0, 1.0), direction=rotation)
    plan = plan_output_grid(oblique, 2, OSSNetSettings(), "RAS")
    assert plan.resampled and np.allclose(plan.model_grid.direction, np.eye(3))
    assert plan.model_grid.shape_kji != oblique.shape_kji  # the rotated box is larger
    assert plan.output == plan.model_grid and "oblique" in plan.summary()
    lps = plan_output_grid(oblique, 2, OSSNetSettings(), "LPS")
    assert np.allclose(lps.model_grid.direction, np.diag([-1.0, -1.0, 1.0]))


def test_an_axial_input_in_another_voxel_order_is_read_in_the_models_without_interpolation():
    """The BraTS model was trained on LPS-stored arrays: a RAS-stored or sagittal-stored copy of a
    scan is planned on the LPS grid over the same voxel centres (re-indexed, no note); an LPS
    input is read as it is."""
    lps = VolumeGeometry.compose(BRATS_SHAPE, (1.0, 1.0, 1.5), origin=(120.0, 110.0, -70.0),
                                 direction=np.diag([-1.0, -1.0, 1.0]))
    plan = plan_output_grid(lps, 2, OSSNetSettings(), "LPS")
    assert plan.model_grid == lps and not plan.resampled
    corner = lps.voxel_to_ras(np.array(lps.shape_ijk) - 1)
    ras = VolumeGeometry.compose(BRATS_SHAPE, (1.0, 1.0, 1.5), origin=(corner[0], corner[1], -70.0))
    sagittal = VolumeGeometry.compose(BRATS_SHAPE[::-1], (1.5, 1.0, 1.0), origin=(corner[0], corner[1], -70.0),
                                      direction=np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]]))
    for other in (ras, sagittal):
        plan = plan_output_grid(other, 2, OSSNetSettings(), "LPS")
        assert not plan.resampled and "oblique" not in plan.summary()
        assert plan.model_grid.matches(lps, atol=1e-9)


def test_too_large_an_output_grid_is_refused_with_what_to_do():
    geometry = VolumeGeometry.compose(BRATS_SHAPE, (1.0, 1.0, 1.0))
    plan_output_grid(geometry, 2, OSSNetSettings(resolution=2.0), "RAS").check()
    huge = plan_output_grid(geometry, 2, OSSNetSettings(output_spacing=0.2), "RAS")
    assert huge.voxels > MAX_OUTPUT_VOXELS
    with pytest.raises(ValueError, match="coarser resolution or an ROI"):
        huge.check()


def test_the_plan_summary_shows_grid_spacing_voxels_and_memory_that_grows_with_resolution():
    geometry = VolumeGeometry.compose(BRATS_SHAPE, (1.0, 1.0, 1.0))
    text = plan_output_grid(geometry, 2, OSSNetSettings(resolution=2.0), "RAS").summary()
    assert text.startswith("480 x 480 x 310 voxels of 0.5 x 0.5 x 0.5 mm (71.4 million); about ")
    assert text.endswith("of memory")
    memories = [plan_output_grid(geometry, 2, OSSNetSettings(resolution=r), "RAS").memory_bytes for r in (0.5, 1.0, 2.0)]
    assert memories[0] <= memories[1] < memories[2]  # up to 1x, preparing the inputs dominates
    assert memory_estimate(BRATS_SHAPE, 2, BRATS_SHAPE, 1024) < memory_estimate(BRATS_SHAPE, 2, BRATS_SHAPE, 65536)
    assert "too large" in plan_output_grid(geometry, 2, OSSNetSettings(output_spacing=0.2), "RAS").summary()


def test_resolution_text_uses_the_first_input_and_the_roi_box(scene):
    flair = volume(scene, "flair", shape=(20, 30, 40), spacing=(1.0, 1.0, 2.0))
    assert resolution_text(None, None, 2, OSSNetSettings(), "LPS") == ""
    assert resolution_text(flair, None, 2, OSSNetSettings(resolution=2.0), "LPS").startswith(
        "Output: 80 x 60 x 40 voxels of 0.5 x 0.5 x 1 mm")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenter(10.0, 10.0, 10.0)
    roi.SetSize(10.0, 10.0, 10.0)
    assert resolution_text(flair, roi, 2, OSSNetSettings(), "LPS").startswith(
        "Output: 11 x 11 x 5 voxels of 1 x 1 x 2 mm")  # voxels the box touches
    roi.SetCenter(500.0, 500.0, 500.0)
    assert "does not overlap" in resolution_text(flair, roi, 2, OSSNetSettings(), "LPS")


def test_run_summary_reports_grid_decoded_share_and_notes(scene):
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "pat0006 OSS-Net")
    geometry = VolumeGeometry.compose((20, 30, 40), (0.5, 0.5, 0.5))
    result = OSSNetResult(segmentation, geometry, np.ones(geometry.shape_kji, np.uint8), 0.0312, 748, 12.5,
                          details=["The T1c volume 't1c' is stored on another grid: it was resampled (linear "
                                   "interpolation) onto the grid of 'flair'."])
    text, style = summary_text(run_summary(result))
    assert style == ""  # a resampled input is a fact about the run, not a warning
    assert text.splitlines()[0] == "Done in 12 s: 'pat0006 OSS-Net'."
    assert "Output grid 40 x 30 x 20 voxels of 0.5 x 0.5 x 0.5 mm" in text and "decoded 3.1%" in text
    assert text.splitlines()[-1].startswith("The T1c volume")
    # A warning (here an empty result's) turns the result line red, as CHECK in the commands.
    warned = dataclasses.replace(result, warnings=["The segmentation of 'flair' is empty: no whole tumour was found."])
    text, style = summary_text(run_summary(warned))
    assert style == WARNING_STYLE and text.splitlines()[-1].startswith("WARNING: The segmentation of 'flair' is empty")


@pytest.mark.parametrize(("name", "flair", "t1c"), [
    ("Flair_subtrMeanDivStd.nii.gz", True, False),
    ("T1c_subtrMeanDivStd.nii.gz", False, True),
    ("BraTS20_Training_001_t1ce.nii.gz", False, True),
    ("BraTS20_Training_001_flair", True, False),
    ("BraTS20_Training_001_t1.nii.gz", False, False),
    ("BraTS20_Training_001_seg.nii.gz", False, False),
    ("flair_mask.nii.gz", False, False),
    ("OTMultiClass.nii.gz", False, False),
])
def test_inputs_are_recognised_by_name(name, flair, t1c):
    assert (is_input(name, "FLAIR"), is_input(name, "T1c")) == (flair, t1c)


def test_the_panel_module_imports_no_slicer_gui():
    import OSSNetSegmentLib.panel as panel_module

    assert not hasattr(panel_module, "qt") and slicer is not None
