"""The OSS-Net batch API and CLI end to end on a real BraTS case, headless (slicer-core scene).

The validation case (never seen in training) is segmented through ``OSSNetSegmentLogic`` from
FLAIR and contrast-T1 volume nodes loaded like Slicer loads them, and through ``ossnet-segment``:
the Dice of the whole tumour must be within 0.02 of the model card's validation figure; a 2x
finer segmentation must align with the 1x one; a cancelled run must leave the scene as it was;
bad inputs must fail with a message naming the problem. These need the shipped weights
(``OSSNET_WEIGHTS`` may name another file, e.g. a checkpoint, with its card beside it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pytest

from EfficientSegmentationCommon.errors import CancelledError, InputVolumeError
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.grids import crop_to_corners
from EfficientSegmentationCommon.metrics import dice
from EfficientSegmentationCommon.progress import CancelRequest
from EfficientSegmentationCommon.registry import ModelRegistry
from EfficientSegmentationCommon.resampling import resample
from EfficientSegmentationCommon.scene import load_volume
from EfficientSegmentationCommon.segmentation_output import export_segmentation_labels, write_scalar_volume
from EfficientSegmentationCommon.volume_arrays import array_from_volume
from OSSNetSegmentLib import cli
from OSSNetSegmentLib.data import INPUT_FILES, LABELS_FILE, read_split
from OSSNetSegmentLib.logic import ATTRIBUTE_PREFIX, OSSNetSegmentLogic

from conftest import DATA_ROOT, REPO_ROOT

MODELS = REPO_ROOT / "OSSNetSegment" / "Resources" / "Models"
WEIGHTS = Path(os.environ.get("OSSNET_WEIGHTS", MODELS / "ossnet_brats_wholetumour.pt"))
MODEL_ID = "ossnet-brats-wholetumour"
CASE_DIR = DATA_ROOT / "BraTS_sample" / read_split(MODELS / "brats_split.json")["validation"][0]

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"trained weights not yet in {WEIGHTS}")


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    """The shipped registry, its OSS-Net entry pointing at the weights under test."""
    shipped = ModelRegistry.default()
    return ModelRegistry([dataclasses.replace(e, path=WEIGHTS) if e.id == MODEL_ID else e for e in shipped.entries])


@pytest.fixture(scope="module")
def card_dice() -> float:
    return json.loads(WEIGHTS.with_suffix(".json").read_text())["metrics"]["validation_dice"]


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    labels = np.asarray(nibabel.load(str(CASE_DIR / LABELS_FILE)).dataobj).transpose(2, 1, 0)
    return labels > 0


@pytest.fixture
def case(scene):
    """FLAIR and contrast-T1 volume nodes of the validation case, loaded as Slicer loads them."""
    return [load_volume(scene, CASE_DIR / INPUT_FILES[name]) for name in ("FLAIR", "T1c")]


@pytest.fixture
def logic(scene, registry) -> OSSNetSegmentLogic:
    return OSSNetSegmentLogic(scene, registry)


def tumour_roi(scene, volume, truth: np.ndarray, size_mm: float = 64.0):
    """A markups ROI box of ``size_mm`` around the centre of the expert tumour."""
    centre = VolumeGeometry.from_volume_node(volume).voxel_to_ras(np.argwhere(truth).mean(axis=0)[::-1])
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "tumour")
    roi.SetCenter(*centre)
    roi.SetSize(size_mm, size_mm, size_mm)
    return roi


def node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def test_logic_segments_the_validation_case_as_the_model_card_says(scene, logic, case, truth, card_dice):
    flair, t1c = case
    before = [array_from_volume(v)[0] for v in case]
    messages = []
    result = logic.segment(case, progressCallback=lambda fraction, message: messages.append(message))
    segmentation = result.segmentation
    labels = export_segmentation_labels(scene, segmentation, flair, logic.model_entry(None).segments)
    measured = dice(labels == 1, truth)
    assert abs(measured - card_dice) <= 0.02, f"Dice {measured:.4f}, model card {card_dice}"
    # Named, coloured segment with a 3D surface, on the input's grid, facts stored on the node.
    segment = segmentation.GetSegmentation().GetNthSegment(0)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1 and segment.GetName() == "whole tumour"
    assert np.allclose(segment.GetColor(), (0.93, 0.47, 0.2))
    assert segmentation.GetSegmentation().ContainsRepresentation("Closed surface")
    assert result.geometry == VolumeGeometry.from_volume_node(flair)
    assert 0 < result.decoded_fraction < 0.1  # coarse-to-fine: only near the border
    assert float(segmentation.GetAttribute(ATTRIBUTE_PREFIX + "DecodedFraction")) == pytest.approx(
        result.decoded_fraction, abs=1e-5)
    assert float(segmentation.GetAttribute(ATTRIBUTE_PREFIX + "Seconds")) > 0
    assert segmentation.GetAttribute(ATTRIBUTE_PREFIX + "Model") == MODEL_ID
    assert any(message.startswith("level 3/3") for message in messages)  # progress per level
    # The inputs are untouched.
    for node, voxels in zip(case, before, strict=True):
        assert np.array_equal(array_from_volume(node)[0], voxels)


def test_a_2x_finer_segmentation_aligns_with_the_1x_one(scene, logic, case, truth):
    flair, t1c = case
    roi = tumour_roi(scene, flair, truth)
    native = logic.segment(case, roi=roi)
    fine = logic.segment(case, roi=roi, resolution=2.0)
    assert fine.geometry.spacing == pytest.approx((0.5, 0.5, 0.5))
    assert fine.geometry.shape_kji == tuple(2 * n for n in native.geometry.shape_kji)
    # The segmentation keeps its own finer grid in the scene ...
    fine_grid = write_scalar_volume(scene, np.zeros(fine.geometry.shape_kji, np.float32), fine.geometry, "fine grid")
    entry = logic.model_entry(None)
    on_fine_grid = export_segmentation_labels(scene, fine.segmentation, fine_grid, entry.segments)
    assert dice(on_fine_grid == 1, fine.labels == 1) == pytest.approx(1.0)
    # ... and, brought back to the input's grid by Slicer, agrees with the 1x segmentation.
    native_on_input = export_segmentation_labels(scene, native.segmentation, flair, entry.segments)
    fine_on_input = export_segmentation_labels(scene, fine.segmentation, flair, entry.segments)
    assert dice(fine_on_input == 1, native_on_input == 1) >= 0.95
    assert fine.decoded_fraction < native.decoded_fraction


def test_cancel_leaves_the_scene_as_it_was(scene, logic, case):
    existing = logic.segment(case, resolution=0.5).segmentation
    entry = logic.model_entry(None)
    before_ids = node_ids(scene)
    before_labels = export_segmentation_labels(scene, existing, case[0], entry.segments)
    cancel = CancelRequest()

    def cancel_while_decoding(fraction: float, message: str) -> None:
        if message.startswith("level 2"):
            cancel.cancel()

    with pytest.raises(CancelledError):
        logic.segment(case, outputSegmentation=existing, progressCallback=cancel_while_decoding, cancelRequest=cancel)
    assert node_ids(scene) == before_ids
    assert np.array_equal(export_segmentation_labels(scene, existing, case[0], entry.segments), before_labels)


def test_bad_inputs_fail_with_a_message_naming_the_problem(scene, logic, case):
    flair, t1c = case
    with pytest.raises(InputVolumeError, match="missing: T1c"):
        logic.segment([flair])
    with pytest.raises(InputVolumeError, match="missing: FLAIR"):
        logic.segment([None, t1c])
    far = write_scalar_volume(scene, array_from_volume(t1c)[0], VolumeGeometry.compose(
        (155, 240, 240), (1.0, 1.0, 1.0), (600.0, 0.0, 0.0)), "T1c far away")
    with pytest.raises(InputVolumeError, match="T1c volume 'T1c far away' covers 0% of the brain in the FLAIR volume"):
        logic.segment([flair, far])
    flat = write_scalar_volume(scene, np.zeros((1, 240, 240), np.float32), VolumeGeometry.compose(
        (1, 240, 240), (1.0, 1.0, 1.0)), "one slice")
    with pytest.raises(InputVolumeError, match="single slice"):
        logic.segment([flat, t1c])
    with pytest.raises(ValueError, match="resolution must be between"):
        logic.segment(case, resolution=0.0)


def test_a_second_input_on_another_grid_is_resampled_onto_the_first_with_a_note(scene, logic, case, truth):
    """A fact about the run, not a warning. A fresh-user trial: the same patient's T1c stored at
    2 mm was warned of as another brain (Dice 0.84): it had been resampled onto the FLAIR's grid
    with 0, brain-like in a z-scored scan, beyond its edge before the brains were compared."""
    flair, t1c = case
    voxels, geometry = array_from_volume(t1c)
    coarse = geometry.with_spacing((2.0, 2.0, 2.0))
    t1c_2mm = write_scalar_volume(scene, resample(voxels, geometry, coarse, fill=float(voxels.min())), coarse,
                                  "T1c 2 mm")
    roi = tumour_roi(scene, flair, truth)
    reference = logic.segment(case, roi=roi)
    result = logic.segment([flair, t1c_2mm], roi=roi)
    assert result.details == ["The T1c volume 'T1c 2 mm' is stored on another grid: it was resampled (linear "
                              "interpolation) onto the grid of 'Flair_subtrMeanDivStd'."]
    assert result.warnings == []
    assert result.geometry == reference.geometry
    assert dice(result.labels == 1, reference.labels == 1) > 0.8


def test_thick_slice_inputs_are_segmented_and_those_beyond_the_model_card_are_warned_of(scene, logic, case, truth):
    """A 2D FLAIR of thick axial slices (each the mean of the 1 mm slices it covers) beside the
    3D T1c, a common protocol: at the card's ``maxSpacingMm`` for the FLAIR (5 mm) it is segmented
    on its own grid without a warning and about as well as the 1 mm FLAIR; 7 mm slices get the
    warning. A thick T1c is warned of above 3 mm (``Testing/Benchmarks/thick_slice_scans.py
    --model ossnet`` measured where the drop begins for each)."""
    flair, t1c = case
    assert logic.model_entry(None).max_spacing_mm == {"FLAIR": 5, "T1c": 3}
    voxels, geometry = array_from_volume(flair)
    roi = tumour_roi(scene, flair, truth)
    reference = logic.segment(case, roi=roi)
    for spacing in (5, 7):
        count = voxels.shape[0] // spacing
        thick = voxels[:count * spacing].reshape(count, spacing, *voxels.shape[1:]).mean(axis=1)
        matrix = geometry.ijk_to_ras.copy()
        matrix[:3, 2] *= spacing
        matrix[:3, 3] = geometry.voxel_to_ras((0, 0, (spacing - 1) / 2))  # the first slice's centre
        thick_flair = write_scalar_volume(scene, thick, VolumeGeometry(matrix, thick.shape), f"FLAIR {spacing} mm")
        result = logic.segment([thick_flair, t1c], roi=roi)
        coarse = [w for w in result.warnings if "coarser than the 5 mm" in w]
        assert len(coarse) == (spacing > 5) and all(f"'FLAIR {spacing} mm'" in w for w in coarse)
        assert result.geometry.spacing == pytest.approx((1.0, 1.0, spacing))
        assert (f"The segmentation lies on a grid of 1 x 1 x {spacing} mm voxels (the FLAIR's); OSS-Net can "
                "decode any point, so for 1 mm along every axis ask for that output spacing") in " ".join(result.details)
        truth_there = resample(truth.astype(np.uint8), geometry, result.geometry, order=0) > 0
        reference_there = resample(reference.labels, reference.geometry, result.geometry, order=0) > 0
        assert dice(result.labels == 1, truth_there) > dice(reference_there, truth_there) - 0.03
    # A thick T1c beside the 1 mm FLAIR costs more (0.034 Dice at 4 mm on this case): warned above 3 mm.
    t1c_voxels, t1c_geometry = array_from_volume(t1c)
    for spacing in (3, 4):
        count = t1c_voxels.shape[0] // spacing
        thick = t1c_voxels[:count * spacing].reshape(count, spacing, *t1c_voxels.shape[1:]).mean(axis=1)
        matrix = t1c_geometry.ijk_to_ras.copy()
        matrix[:3, 2] *= spacing
        matrix[:3, 3] = t1c_geometry.voxel_to_ras((0, 0, (spacing - 1) / 2))
        thick_t1c = write_scalar_volume(scene, thick, VolumeGeometry(matrix, thick.shape), f"T1c {spacing} mm")
        warnings = logic.prepare([flair, thick_t1c]).warnings
        assert [w for w in warnings if "coarser than the 3 mm" in w and f"'T1c {spacing} mm'" in w] == (
            [] if spacing == 3 else [w for w in warnings if "coarser" in w]) and len(warnings) == (spacing > 3)


def test_a_t1c_of_another_patient_is_warned_of(scene, logic, case, truth):
    flair, _ = case
    other = next(p for p in sorted(CASE_DIR.parent.iterdir()) if p.is_dir() and p != CASE_DIR)
    t1c = load_volume(scene, other / INPUT_FILES["T1c"])
    t1c.SetName("T1c of another patient")
    result = logic.segment([flair, t1c], roi=tumour_roi(scene, flair, truth))
    assert any(warning.startswith("The FLAIR volume 'Flair_subtrMeanDivStd' and the T1c volume 'T1c of another "
                                  "patient' do not show the same brain") for warning in result.warnings)


def test_a_t1c_cropped_to_its_brain_is_used_and_one_cut_short_is_warned_of(scene, logic, case, truth):
    """A fresh-user trial: a T1c cropped to 10 mm around its brain (45% of the FLAIR's box) was
    refused as not covering the FLAIR. Cropped to 2 mm around the brain it gives the same labels
    (beyond it the background is filled in); cut a quarter short it runs with a warning saying how
    much of the brain it covers."""
    flair, t1c = case
    voxels, geometry = array_from_volume(t1c)
    brain_ijk = np.argwhere(voxels > voxels.min())[:, ::-1]
    low, high = brain_ijk.min(axis=0) - 2, brain_ijk.max(axis=0) + 2  # 2 mm around the brain
    three_quarters = low[0] + 3 * (high[0] - low[0]) // 4
    roi = tumour_roi(scene, flair, truth)
    uncropped = logic.segment(case, roi=roi)
    for name, last_i in (("T1c cropped", high[0]), ("T1c cut short", three_quarters)):
        corners = geometry.voxel_to_ras(np.array([low, [last_i, high[1], high[2]]]))
        box, crop = crop_to_corners(geometry, corners, name)
        cropped = write_scalar_volume(scene, np.ascontiguousarray(voxels[box]), crop, name)
        result = logic.segment([flair, cropped], roi=roi)
        coverage = [w for w in result.warnings if "of the brain in the FLAIR volume" in w]
        if name == "T1c cropped":
            assert result.warnings == [] and np.array_equal(result.labels, uncropped.labels)
        else:
            assert len(coverage) == 1 and coverage[0].startswith("The T1c volume 'T1c cut short' covers ")
            assert "Give a T1c scan that covers the whole brain" in coverage[0]
            assert not any("do not show the same brain" in warning for warning in result.warnings)


def test_the_same_scan_stored_ras_gives_the_same_segmentation(scene, logic, case, truth):
    """BraTS files are stored LPS, as the model was trained; the same voxels re-encoded RAS (a
    common conversion) are read back in the model's voxel order, so the result is the same (it
    was not: the model read the flipped arrays, Dice 0.98 between the two results)."""
    flair, _ = case
    copies = []
    for node in case:
        voxels, geometry = array_from_volume(node)
        corner = geometry.voxel_to_ras(np.array(geometry.shape_ijk) - 1)  # the R, A-most voxel: RAS's first
        ras = VolumeGeometry.compose(geometry.shape_kji, geometry.spacing, (corner[0], corner[1], geometry.origin[2]))
        assert np.allclose(np.diag(geometry.direction), (-1, -1, 1))  # the file is LPS
        copies.append(write_scalar_volume(scene, np.ascontiguousarray(voxels[:, ::-1, ::-1]), ras, f"{node.GetName()} RAS"))
    roi = tumour_roi(scene, flair, truth)
    stored = logic.segment(case, roi=roi)
    reencoded = logic.segment(copies, roi=roi)
    assert reencoded.geometry.matches(stored.geometry, atol=1e-6)
    assert np.array_equal(reencoded.labels, stored.labels)
    assert not any("resampled" in note for note in reencoded.warnings)


def test_cli_writes_a_label_map_of_the_case_folder(tmp_path, truth, card_dice, registry, monkeypatch):
    monkeypatch.setattr(ModelRegistry, "default", classmethod(lambda cls: registry))
    assert cli.main(["--input", str(CASE_DIR), "-o", str(tmp_path), "--format", "nii.gz", "--threads", "1"]) == 0
    written = nibabel.load(str(tmp_path / f"{CASE_DIR.name}.nii.gz"))
    labels = np.asarray(written.dataobj).transpose(2, 1, 0)
    assert set(np.unique(labels)) <= {0, 1}
    assert abs(dice(labels == 1, truth) - card_dice) <= 0.02
    reference = nibabel.load(str(CASE_DIR / LABELS_FILE))
    assert np.allclose(written.affine, reference.affine, atol=1e-4)


def test_cli_on_a_sagittally_stored_case_writes_and_reports_the_files_grid(tmp_path, capsys, truth, card_dice,
                                                                          registry, monkeypatch):
    """The same case with its voxel axes permuted (I <- K, J <- I, K <- J): read in the model's
    voxel order without interpolation, written back on the file's own grid, and the printed grid
    is the written one (it was the model's)."""
    monkeypatch.setattr(ModelRegistry, "default", classmethod(lambda cls: registry))
    folder = tmp_path / "sagittal"
    folder.mkdir()
    for name in ("FLAIR", "T1c"):
        image = nibabel.load(str(CASE_DIR / INPUT_FILES[name]))
        affine = image.affine.copy()
        affine[:, :3] = image.affine[:, [2, 0, 1]]
        nibabel.save(nibabel.Nifti1Image(np.asarray(image.dataobj).transpose(2, 0, 1), affine),
                     str(folder / INPUT_FILES[name]))
    assert cli.main(["--input", str(folder), "-o", str(tmp_path / "out"), "--format", "nii.gz", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    written = nibabel.load(str(tmp_path / "out" / "sagittal.nii.gz"))
    assert written.shape == (155, 240, 240) and "(155 x 240 x 240 voxels;" in printed
    assert "resampled" not in printed
    labels = np.asarray(written.dataobj).transpose(1, 2, 0).transpose(2, 1, 0)  # back to the case's I, J, K, then KJI
    assert abs(dice(labels == 1, truth) - card_dice) <= 0.02


def test_cli_reports_a_missing_modality_and_a_wrong_number_of_files(tmp_path, capsys, registry, monkeypatch):
    monkeypatch.setattr(ModelRegistry, "default", classmethod(lambda cls: registry))
    folder = tmp_path / "case_without_t1c"
    folder.mkdir()
    shutil.copy(CASE_DIR / INPUT_FILES["FLAIR"], folder)
    assert cli.main(["--input", str(folder), "-o", str(tmp_path / "out")]) == 1  # the case fails, in the batch
    printed = capsys.readouterr().out
    assert "FAILED case_without_t1c: Case folder" in printed and "exactly one T1c volume" in printed
    assert cli.main(["--input", str(CASE_DIR / INPUT_FILES["FLAIR"]), "-o", str(tmp_path / "out")]) == 2
    assert "needs 2 input volumes, in this order: FLAIR, T1c; 1 given" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_setting_errors_name_the_flags(tmp_path, capsys):
    """A bad setting given on the command line is named by the flag the user typed, not by the
    console keyword (``outputSpacing``); nothing is segmented and nothing written."""
    inputs = [str(CASE_DIR / INPUT_FILES[name]) for name in ("FLAIR", "T1c")]
    for flags, message in ((["--spacing", "0"], "ossnet-segment: --output-spacing must be one or three positive "
                                                "values in mm"),
                           (["--spacing", "2", "--resolution", "2"], "give --resolution or --output-spacing, not both"),
                           (["--chunk-size", "10"], "--chunk-size must be")):
        assert cli.main(["--input", *inputs, "-o", str(tmp_path / "out"), *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_writes_the_label_map_on_the_chosen_output_grid(tmp_path, truth, registry, monkeypatch):
    """``--spacing 2``: the label map lies on a 2 mm grid over the same box as the input."""
    monkeypatch.setattr(ModelRegistry, "default", classmethod(lambda cls: registry))
    inputs = [str(CASE_DIR / INPUT_FILES[name]) for name in ("FLAIR", "T1c")]
    assert cli.main(["--input", *inputs, "-o", str(tmp_path), "--format", "nii.gz", "--spacing", "2"]) == 0
    written = nibabel.load(str(tmp_path / "Flair_subtrMeanDivStd.nii.gz"))
    assert written.shape == (120, 120, 78) and np.allclose(written.header.get_zooms()[:3], 2.0)
    reference = nibabel.load(str(CASE_DIR / LABELS_FILE))
    corner = lambda image: image.affine @ np.array([-0.5, -0.5, -0.5, 1.0])  # noqa: E731  (the box's corner)
    assert np.allclose(corner(written), corner(reference), atol=0.5)  # same box (155 slices -> 78 of 2 mm)
    labels = np.asarray(written.dataobj).transpose(2, 1, 0) == 1
    upsampled = labels.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: truth.shape[0]]
    assert dice(upsampled, truth) > 0.6
