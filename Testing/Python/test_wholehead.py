"""Whole-head Med-NCA: both hippocampi of a head in one call, their volumes, and the boxes as ROI nodes.

Real data: the MNI152 2009a template that nilearn ships (a whole brain at 1 mm), stored RAS,
LPS and left-handed (LAS), and the Med-NCA hippocampus model.
"""

from __future__ import annotations

import os

import nibabel
import numpy as np
import pytest
from conftest import load_case
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.grids import crop_to_roi
from EfficientSegmentationCommon.metrics import dice
from EfficientSegmentationCommon.scene import create_scene
from EfficientSegmentationCommon.segmentation_output import export_segmentation_labels
from EfficientSegmentationCommon.volume_arrays import update_volume_from_array
from MedNCASegmentLib.box_nodes import SIDE_ATTRIBUTE, box_from_roi, box_to_roi
from MedNCASegmentLib.localization import HippocampusBox, LocalizationError, template_path
from MedNCASegmentLib.logic import VOLUME_ATTRIBUTE, MedNCASegmentLogic
from MedNCASegmentLib.settings import MedNCASettings
from MedNCASegmentLib.wholehead import HippocampusVolumes, asymmetry_index
from scipy.spatial.transform import Rotation


def test_asymmetry_index_definition():
    from MedNCASegmentLib.cli import volume_row

    assert asymmetry_index(3000.0, 3000.0) == 0.0
    empty = HippocampusVolumes({"left anterior hippocampus": 0.0, "left posterior hippocampus": 0.0,
                                "right anterior hippocampus": 0.0, "right posterior hippocampus": 0.0}, 0.0, 0.0)
    assert empty.summary().endswith("asymmetry index (L-R)/((L+R)/2) n/a (both sides empty)")
    assert volume_row("head", empty)["asymmetry index (%)"] == ""
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
    geometry = VolumeGeometry.compose((120, 120, 120), (1.0, 1.0, 1.0), origin=(-80.0, -80.0, -60.0))
    slices, cropped = crop_to_roi(geometry, roi)
    low, high = cropped.bounds_ras()
    assert np.all(low <= box.corners_ras.min(axis=0) + 0.5) and np.all(high >= box.corners_ras.max(axis=0) - 0.5)
    # Moving the node moves the box the next run uses.
    roi.SetCenter(-20.0, -21.0, -10.0)
    np.testing.assert_allclose(box_from_roi("left", roi).centre_ras, (-20.0, -21.0, -10.0), atol=1e-9)


# -- both sides through the logic, on the template stored three ways ----------------------------

ENCODINGS = {"RAS": (), "LPS": (0, 1), "LAS-left-handed": (0,)}  # voxel axes that run the other way


def reencoded(image: np.ndarray, geometry: VolumeGeometry, flipped_axes) -> tuple[np.ndarray, VolumeGeometry]:
    """The same head stored with voxel axis i (0) and/or j (1) reversed: same physical image."""
    flip = np.eye(4)
    for axis in flipped_axes:
        flip[axis, axis], flip[axis, 3] = -1, geometry.shape_ijk[axis] - 1
    array = np.flip(image, axis=[2 - axis for axis in flipped_axes]) if flipped_axes else image
    return np.ascontiguousarray(array), VolumeGeometry(geometry.ijk_to_ras @ flip, geometry.shape_kji)


class HeadRuns(dict):
    """Whole-head runs (1 stochastic run, default mode "auto") of the template per encoding, made
    when a test first asks for one: encoding -> (result, progress messages, volume node, grid)."""

    def __init__(self) -> None:
        super().__init__()
        self.scene = create_scene()
        self.logic = MedNCASegmentLogic(self.scene)
        template = nibabel.load(str(template_path()))
        self.image = np.asarray(template.dataobj, dtype=np.float32).transpose(2, 1, 0)
        self.geometry = VolumeGeometry(template.affine, self.image.shape)

    def __missing__(self, name: str):
        array, grid = reencoded(self.image, self.geometry, ENCODINGS[name])
        volume = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"MNI152 {name}")
        update_volume_from_array(volume, array, grid)
        messages: list[str] = []
        result = self.logic.segment(volume, runs=1, progressCallback=lambda _, message: messages.append(message))
        self[name] = (result, messages, volume, grid)
        return self[name]


@pytest.fixture(scope="module")
def head_runs():
    runs = HeadRuns()
    return runs.scene, runs.logic, runs


def voxel_positions(labels: np.ndarray, geometry: VolumeGeometry, values) -> np.ndarray:
    """RAS positions (n, 3) of the voxels whose label is in ``values``."""
    return geometry.voxel_to_ras(np.argwhere(np.isin(labels, list(values)))[:, ::-1])


def test_whole_head_segments_both_sides_in_their_boxes(head_runs):
    scene, logic, runs = head_runs
    result, messages, volume, geometry = runs["RAS"]
    entry = logic.model_entry(None)
    assert result.mode == "head" and result.localization is not None
    names = [result.segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(result.segmentation.GetSegmentation().GetNumberOfSegments())]
    assert names == [spec.name for spec in entry.bilateral_segments]  # the registry's names, in label order
    stages = [next(i for i, m in enumerate(messages) if m.startswith(stage)) for stage in ("locating", "left", "right")]
    assert stages == sorted(stages)  # progress names the stages, in order
    for side, (anterior, posterior) in (("left", (1, 2)), ("right", (3, 4))):
        node = result.boxes[side]
        assert node.GetClassName() == "vtkMRMLMarkupsROINode" and node.GetAttribute(SIDE_ATTRIBUTE) == side
        box = box_from_roi(side, node)
        for value in (anterior, posterior):
            points = voxel_positions(result.labels, geometry, [value])
            assert len(points) > 500, f"label {value} nearly empty"
            assert box.contains(points).all(), f"label {value} outside the {side} box"
        # Anatomy in physical space: the head (anterior) lies in front of the body and tail.
        assert (voxel_positions(result.labels, geometry, [anterior])[:, 1].mean()
                > voxel_positions(result.labels, geometry, [posterior])[:, 1].mean() + 5)
    # One run (to keep the test short) has no quality score, and says so; nothing else is wrong.
    assert [w for w in result.warnings if not w.startswith("One run gives no quality score")] == []
    assert result.structure_spread == {"left": None, "right": None}


def test_whole_head_quality_signals_per_side(head_runs):
    """With several runs each side has its spread inside the structure, below the card's
    warning threshold on the template (a clean, typical head), and nothing is flagged."""
    scene, logic, runs = head_runs
    volume = runs["RAS"][2]
    result = logic.segment(volume, runs=3, seed=0)
    assert set(result.structure_spread) == {"left", "right"}
    for side, value in result.structure_spread.items():
        assert 0 < value < result.structure_spread_warning_threshold, side
    assert not result.likely_failure and all(score is not None for score in result.quality.values())


def test_volumes_are_voxel_counts_of_the_exported_labelmap(head_runs):
    scene, logic, runs = head_runs
    result, _, volume, geometry = runs["RAS"]
    segments = logic.model_entry(None).bilateral_segments
    exported = export_segmentation_labels(scene, result.segmentation, volume, segments)
    voxel_mm3 = abs(np.linalg.det(geometry.ijk_to_ras[:3, :3]))
    for spec in segments:
        expected = np.count_nonzero(exported == spec.label_value) * voxel_mm3
        assert result.volumes.segments_mm3[spec.name] == pytest.approx(expected)
        stored = result.segmentation.GetAttribute(f"{VOLUME_ATTRIBUTE}.{spec.name} (mm3)")
        assert float(stored) == pytest.approx(expected, abs=1e-3)
    volumes = result.volumes
    left = sum(volumes.segments_mm3[s.name] for s in segments if s.name.startswith("left"))
    right = sum(volumes.segments_mm3[s.name] for s in segments if s.name.startswith("right"))
    assert (volumes.left_mm3, volumes.right_mm3, volumes.total_mm3) == pytest.approx((left, right, left + right))
    assert volumes.asymmetry_percent == pytest.approx((left - right) / ((left + right) / 2) * 100)
    assert float(result.segmentation.GetAttribute(f"{VOLUME_ATTRIBUTE}.asymmetry index (%)")) == pytest.approx(
        volumes.asymmetry_percent, abs=1e-3)
    assert 2000 < left < 7000 and 2000 < right < 7000  # a hippocampus each (the template is an adult brain)


@pytest.mark.parametrize("encoding", ["LPS", "LAS-left-handed"])
def test_left_and_right_are_physical_whatever_the_voxel_order(head_runs, encoding):
    """Stored LPS or left-handed, the left segments lie at R < 0 (the patient's left), and each
    side covers the same physical voxels as in the RAS copy (Dice over 0.8: one stochastic run
    is noisy, its volume moved by up to 10 % between these physically identical inputs)."""
    _, _, runs = head_runs
    reference = runs["RAS"][0]
    result, _, _, geometry = runs[encoding]
    assert voxel_positions(result.labels, geometry, [1, 2])[:, 0].max() < 0
    assert voxel_positions(result.labels, geometry, [3, 4])[:, 0].min() > 0
    in_ras_order = np.flip(result.labels, axis=[2 - axis for axis in ENCODINGS[encoding]])
    for values in ((1, 2), (3, 4)):
        assert dice(np.isin(in_ras_order, values), np.isin(reference.labels, values)) > 0.8, values


def test_adjusted_boxes_are_used_as_placed(head_runs):
    """The boxes of a run, moved by the user, are what the next run segments (no new localisation)."""
    scene, logic, runs = head_runs
    result, _, volume, _ = runs["RAS"]
    left = result.boxes["left"]
    centre = np.array(left.GetCenter()) + (3.0, 0.0, 0.0)
    left.SetCenter(*centre)
    job = logic.prepare(volume, boxes=result.boxes)
    assert job.mode == "head" and job.box_nodes == result.boxes
    np.testing.assert_allclose(job.boxes["left"].centre_ras, centre, atol=1e-9)
    with pytest.raises(ValueError, match="right"):
        logic.prepare(volume, boxes={"left": left})


def test_msd_crop_keeps_the_single_structure_path_and_head_mode_refuses_it(scene):
    logic = MedNCASegmentLogic(scene)
    case = load_case(scene, "hippocampus_001")
    assert logic.prepare(case.volume).mode == "crop"
    before = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    with pytest.raises(LocalizationError, match="too small.*ROI"):
        logic.segment(case.volume, mode="head")
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == before  # nothing written
    with pytest.raises(ValueError, match="mode must be one of"):
        MedNCASettings(mode="both")


def test_cli_manual_roi_and_volumes_csv(tmp_path, capsys):
    """``--roi`` segments one hippocampus in a box given in mm; ``--volumes`` writes a row per input,
    failed ones included; ``--mode head`` on a crop is refused with a message suggesting an ROI."""
    import csv

    from conftest import hippocampus_paths
    from MedNCASegmentLib import cli

    image, _ = hippocampus_paths("hippocampus_001")
    centre = VolumeGeometry(nibabel.load(str(image)).affine, (35, 51, 35)).voxel_to_ras((17, 25, 17))
    table = tmp_path / "volumes.csv"
    status = cli.main([str(image), "-o", str(tmp_path / "out"), "--runs", "1", "--format", "nii.gz",
                       "--roi", *(str(v) for v in centre), "30", "40", "30", "--volumes", str(table)])
    printed = capsys.readouterr().out
    assert status == 0 and "crop mode" in printed and "volume" in printed
    (row,) = list(csv.DictReader(table.open()))
    written = np.asarray(nibabel.load(str(tmp_path / "out" / "hippocampus_001.nii.gz")).dataobj)
    assert row["mode"] == "crop" and row["left hippocampus (mm3)"] == ""
    # One run gives no quality signals: the row says so and is to be checked, as the printed line.
    assert row["likely failure"] == "unknown (1 run)" and row["status"] == "check"
    assert row["warnings"].startswith("One run gives no quality scores") and "CHECK  hippocampus_001:" in printed
    assert float(row["total (mm3)"]) == pytest.approx(np.count_nonzero(written), abs=0.05)  # 1 mm voxels
    assert float(row["anterior hippocampus (mm3)"]) == pytest.approx(np.count_nonzero(written == 1), abs=0.05)
    outside = np.ones(written.shape, bool)
    outside[2:33, 5:46, 2:33] = False  # the voxels whose centres lie in the 30 x 40 x 30 mm box (I, J, K)
    assert not written[outside].any()
    umask = os.umask(0)
    os.umask(umask)  # the label map gets the permissions of any new file, not mkstemp's private 0600
    assert (tmp_path / "out" / "hippocampus_001.nii.gz").stat().st_mode & 0o777 == 0o666 & ~umask

    missing = tmp_path / "missing.nii.gz"
    status = cli.main([str(image), str(missing), "-o", str(tmp_path / "head"), "--mode", "head",
                       "--volumes", str(table)])
    printed = capsys.readouterr().out
    assert status == 1 and "too small" in printed and "--roi" in printed
    rows = list(csv.DictReader(table.open()))  # one row per input, the unreadable one too
    assert [(r["input"], r["status"]) for r in rows] == [(str(image), "failed"), (str(missing), "failed")]
    assert "too small" in rows[0]["warnings"] and "no such file" in rows[1]["warnings"]  # each says why
    assert not (tmp_path / "head").exists()
    with pytest.raises(SystemExit):
        cli.parse_args([str(image), "-o", str(tmp_path), "--mode", "both"])
    for threads in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            cli.parse_args([str(image), "-o", str(tmp_path), "--threads", threads])
    with pytest.raises(SystemExit):  # -o "$OUT" with OUT unset: not the current folder
        cli.parse_args([str(image), "-o", ""])
    assert "is empty (an unset shell variable?)" in capsys.readouterr().err
    # An output "folder" that is a file, or lies under one, is refused before any input is segmented.
    assert cli.main([str(image), "-o", str(table), "--runs", "1"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert cli.main([str(image), "-o", str(table / "out"), "--runs", "1"]) == 2
    assert f"lies under {table}, which is a file" in capsys.readouterr().err
    assert cli.main([str(image), "-o", str(tmp_path / "out"), "--volumes", str(table / "v.csv")]) == 2
    assert (f"cannot write the --volumes table {table / 'v.csv'}: {table} is a file; give a .csv file in a folder"
            in capsys.readouterr().err)
    # A folder in the place of one result: that case fails before it is segmented, the others go on.
    second, _ = hippocampus_paths("hippocampus_003")
    second_name = "hippocampus_003"
    blocked = tmp_path / "blocked"
    (blocked / "hippocampus_001.seg.nrrd").mkdir(parents=True)
    listed = blocked / "v.csv"
    assert cli.main([str(image), str(second), "-o", str(blocked), "--runs", "1", "--volumes", str(listed)]) == 1
    captured = capsys.readouterr()
    header = listed.read_text().splitlines()[0].split(",")
    assert header[:2] == ["input", "status"] and header[-1] == "warnings"  # the failed row came first
    assert (f"FAILED hippocampus_001: The result cannot be written to '{blocked / 'hippocampus_001.seg.nrrd'}': a "
            "folder of that name is there.") in captured.out
    assert "hippocampus_001 [" not in captured.err  # no progress: not segmented
    with pytest.raises(SystemExit):  # a folder named like a table
        cli.main([str(image), "-o", str(blocked), "--volumes", str(blocked / "hippocampus_001.seg.nrrd")])
    (blocked / "t.csv").mkdir()
    with pytest.raises(SystemExit):
        cli.main([str(image), "-o", str(blocked), "--volumes", str(blocked / "t.csv")])
    assert f"'{blocked / 't.csv'}' is a folder; give a .csv file name" in capsys.readouterr().err
    assert f"ok     {second_name}:" in captured.out or f"CHECK  {second_name}:" in captured.out
    assert (blocked / f"{second_name}.seg.nrrd").is_file()
