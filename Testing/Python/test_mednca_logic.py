"""Med-NCA segmentation through the module's logic and its CLI, headless, on real hippocampus MRI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, hippocampus_paths, load_case
from EfficientSegmentationCommon.errors import CancelledError, InputVolumeError, ModelError
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.metrics import dice
from EfficientSegmentationCommon.progress import CancelRequest
from EfficientSegmentationCommon.resampling import resample, resample_labels
from EfficientSegmentationCommon.segmentation_output import export_segmentation_labels, write_scalar_volume
from MedNCASegmentLib import cli
from MedNCASegmentLib.logic import QUALITY_ATTRIBUTE, STRUCTURE_SPREAD_ATTRIBUTE, MedNCASegmentLogic
from MedNCASegmentLib.settings import MedNCASettings

MODELS = REPO_ROOT / "MedNCASegment" / "Resources" / "Models"
CARD = json.loads((MODELS / "mednca2d_hippocampus.json").read_text())
CARD_DICE = {row["case"]: row for row in CARD["per_case"]}
VALIDATION_CASE = json.loads((MODELS / "hippocampus_split.json").read_text())["validation"][0]
RUNS = 2  # enough for the mechanics; Dice checks use the card's own runs and seed


@pytest.fixture
def logic(scene) -> MedNCASegmentLogic:
    return MedNCASegmentLogic(scene)


def node_names(scene) -> list[str]:
    return [scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())]


def segment_names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def test_segments_a_validation_volume_as_the_model_card_says(scene, logic) -> None:
    case = load_case(scene, VALIDATION_CASE)
    progress: list[float] = []
    result = logic.segment(case.volume, runs=CARD["evaluation"]["runs"], seed=CARD["evaluation"]["seed"],
                           progressCallback=lambda fraction, message: progress.append(fraction))
    assert result.mode == "crop"  # an MSD crop (field of view under 80 mm) keeps the single-structure path
    assert segment_names(result.segmentation) == ["anterior hippocampus", "posterior hippocampus"]
    labels = export_segmentation_labels(scene, result.segmentation, case.volume, logic.model_entry(None).segments)
    assert abs(dice(labels > 0, case.labels > 0) - CARD_DICE[VALIDATION_CASE]["dice_foreground"]) <= 0.02
    assert abs(dice(labels == 1, case.labels == 1) - CARD_DICE[VALIDATION_CASE]["dice_anterior"]) <= 0.02
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    assert set(result.quality) == {"anterior hippocampus", "posterior hippocampus"}
    stored = result.segmentation.GetAttribute(f"{QUALITY_ATTRIBUTE}.anterior hippocampus")
    assert float(stored) == pytest.approx(result.quality["anterior hippocampus"], abs=1e-4)
    np.testing.assert_array_equal(case.image, load_case(scene, VALIDATION_CASE).image)  # input untouched


def test_oblique_anisotropic_input_is_segmented_in_its_own_geometry(scene, logic) -> None:
    """The same anatomy on a rotated grid with 1 x 1 x 1.3 mm voxels: the result lands on it."""
    case = load_case(scene, VALIDATION_CASE)
    angle = np.radians(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    spacing = np.array([1.0, 1.0, 1.3])
    extent = np.array(case.geometry.shape_ijk) * np.array(case.geometry.spacing)
    shape_ijk = np.round(extent / spacing).astype(int)
    centre = case.geometry.voxel_to_ras((np.array(case.geometry.shape_ijk) - 1) / 2)
    origin = centre - rotation @ (spacing * (shape_ijk - 1) / 2)
    oblique = VolumeGeometry.compose(tuple(shape_ijk[::-1]), spacing, origin, rotation)
    volume = write_scalar_volume(scene, resample(case.image, case.geometry, oblique), oblique, "oblique")
    truth = resample_labels(case.labels, case.geometry, oblique, (1, 2))
    straight = logic.segment(case.volume, runs=RUNS)
    tilted = logic.segment(volume, runs=RUNS)
    entry = logic.model_entry(None)
    straight_labels = export_segmentation_labels(scene, straight.segmentation, case.volume, entry.segments)
    tilted_labels = export_segmentation_labels(scene, tilted.segmentation, volume, entry.segments)
    assert tilted_labels.shape == oblique.shape_kji
    assert len(tilted.details) == 1 and "(1 x 1 x 1.3 mm voxels, oblique) was resampled" in tilted.details[0]
    assert straight.details == []
    reference = dice(straight_labels > 0, case.labels > 0)
    assert dice(tilted_labels > 0, truth > 0) >= reference - 0.05


def test_a_thick_slice_scan_is_segmented_with_a_warning(scene, logic) -> None:
    """The validation crop as a scan of 5 mm slices (each the mean of the five 1 mm slices it
    covers, placed at their centre): segmented on its own grid, and the result says that its
    voxels are coarser than the model's ``maxSpacingMm`` and that it was resampled; the 1 mm
    crop gets neither."""
    case = load_case(scene, VALIDATION_CASE)
    entry = logic.model_entry(None)
    assert entry.max_spacing_mm is not None and entry.max_spacing_mm < 5
    count = case.image.shape[0] // 5
    thick = case.image[:count * 5].reshape(count, 5, *case.image.shape[1:]).mean(axis=1)
    geometry = VolumeGeometry.compose(thick.shape, (1.0, 1.0, 5.0), case.geometry.voxel_to_ras((0, 0, 2)))
    volume = write_scalar_volume(scene, thick, geometry, "thick slices")
    result = logic.segment(volume, runs=RUNS)
    assert result.labels.shape == thick.shape
    coarse = [w for w in result.warnings if "voxels of 1 x 1 x 5 mm, coarser than the" in w]
    assert len(coarse) == 1 and f"{entry.max_spacing_mm:g} mm" in coarse[0] and "'thick slices'" in coarse[0]
    assert result.details == ["The input 'thick slices' (1 x 1 x 5 mm voxels) was resampled onto the model's "
                              "axis-aligned grid of 1 x 1 x 1 mm voxels (linear interpolation), and the result back "
                              "onto its grid."]
    plain = logic.prepare(case.volume)
    assert not [w for w in plain.warnings if "coarser" in w] and plain.details == []
    # Just over the limit is said as measured, never as "3 mm, coarser than the 3 mm".
    just_over = write_scalar_volume(scene, thick, VolumeGeometry.compose(thick.shape, (1.0, 1.0, 3.004)), "3.004")
    assert "voxels of 1 x 1 x 3.004 mm, coarser than the 3 mm" in " ".join(logic.prepare(just_over).warnings)


def test_roi_crops_the_input_and_places_the_result_back(scene, logic) -> None:
    """A hippocampus crop embedded in a larger, empty field of view, segmented through an ROI."""
    case = load_case(scene, VALIDATION_CASE)
    margin = (6, 10, 8)  # K, J, I voxels on each side
    big = np.zeros(tuple(n + 2 * m for n, m in zip(case.image.shape, margin, strict=True)), np.float32)
    inner = tuple(slice(m, m + n) for m, n in zip(margin, case.image.shape, strict=True))
    big[inner] = case.image
    matrix = case.geometry.ijk_to_ras.copy()
    matrix[:3, 3] = case.geometry.voxel_to_ras(-np.array(margin[::-1], float))
    geometry = VolumeGeometry(matrix, big.shape)
    volume = write_scalar_volume(scene, big, geometry, "embedded")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "hippocampus box")
    low = case.geometry.voxel_to_ras((0, 0, 0))
    high = case.geometry.voxel_to_ras(np.array(case.geometry.shape_ijk) - 1)
    roi.SetCenter(*((low + high) / 2))
    roi.SetSize(*(np.abs(high - low) + 0.5))

    direct = logic.segment(case.volume, runs=RUNS, seed=3)
    cropped = logic.segment(volume, roi=roi, runs=RUNS, seed=3)
    entry = logic.model_entry(None)
    direct_labels = export_segmentation_labels(scene, direct.segmentation, case.volume, entry.segments)
    full = export_segmentation_labels(scene, cropped.segmentation, volume, entry.segments)
    assert full.shape == big.shape
    outside = full.copy()
    outside[inner] = 0
    assert not outside.any()
    assert dice(full[inner] > 0, direct_labels > 0) >= 0.99


def test_cancel_mid_run_leaves_the_scene_as_it_was(scene, logic) -> None:
    case = load_case(scene, VALIDATION_CASE)
    existing = logic.segment(case.volume, runs=1)
    names_before = node_names(scene)
    segments_before = segment_names(existing.segmentation)
    labels_before = export_segmentation_labels(scene, existing.segmentation, case.volume, logic.model_entry(None).segments)
    cancel = CancelRequest()

    def cancel_half_way(fraction: float, message: str) -> None:
        if fraction > 0.5:
            cancel.cancel()

    with pytest.raises(CancelledError):
        logic.segment(case.volume, runs=RUNS, outputSegmentation=existing.segmentation, uncertaintyVolume=True,
                      progressCallback=cancel_half_way, cancelRequest=cancel)
    assert node_names(scene) == names_before
    assert segment_names(existing.segmentation) == segments_before
    np.testing.assert_array_equal(
        export_segmentation_labels(scene, existing.segmentation, case.volume, logic.model_entry(None).segments),
        labels_before)


def test_cancel_while_writing_restores_the_overwritten_output(scene, logic) -> None:
    case = load_case(scene, VALIDATION_CASE)
    existing = logic.segment(case.volume, runs=1)
    names_before = node_names(scene)
    cancel = CancelRequest()
    job = logic.prepare(case.volume, MedNCASettings(runs=1, uncertainty_volume=True), outputSegmentation=existing.segmentation)
    computed = logic.compute(job)
    computed.labels[:] = 0  # an empty result, to see that the old one comes back
    cancel.cancel()
    with pytest.raises(CancelledError):
        logic.finish(job, computed, cancelRequest=cancel)
    assert node_names(scene) == names_before
    restored = export_segmentation_labels(scene, existing.segmentation, case.volume, logic.model_entry(None).segments)
    assert restored.any()


def test_uncertainty_volume_and_overwriting_an_output(scene, logic) -> None:
    case = load_case(scene, VALIDATION_CASE)
    first = logic.segment(case.volume, runs=RUNS)
    again = logic.segment(case.volume, runs=RUNS, outputSegmentation=first.segmentation, uncertaintyVolume=True)
    assert again.segmentation is first.segmentation
    assert segment_names(again.segmentation) == ["anterior hippocampus", "posterior hippocampus"]
    assert again.uncertainty is not None
    spread = VolumeGeometry.from_volume_node(again.uncertainty)
    assert spread == case.geometry


def test_bad_inputs_give_clear_errors(scene, logic) -> None:
    case = load_case(scene, VALIDATION_CASE)
    with pytest.raises(InputVolumeError, match="No input volume"):
        logic.segment(None)
    with pytest.raises(ModelError, match=r"Unknown model 'nope'\. Med-NCA models: mednca2d-hippocampus\. "
                                         r"Give one of these, or a model file \(\.pt\)\.$"):
        logic.segment(case.volume, model="nope")  # this method's models only
    with pytest.raises(ModelError, match="'ossnet-brats-wholetumour' is not a Med-NCA model; Med-NCA models: mednca2d"):
        logic.segment(case.volume, model="ossnet-brats-wholetumour")
    with pytest.raises(ModelError, match="does not exist"):
        logic.segment(case.volume, model="/nowhere/model.pt")
    flat = write_scalar_volume(scene, case.image[:1], VolumeGeometry(case.geometry.ijk_to_ras, (1, *case.image.shape[1:])),
                               "one slice")
    with pytest.raises(InputVolumeError, match="single slice"):
        logic.segment(flat)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far away")
    roi.SetCenter(500, 500, 500)
    roi.SetSize(10, 10, 10)
    with pytest.raises(InputVolumeError, match="does not overlap"):
        logic.segment(case.volume, roi=roi)
    with pytest.raises(ValueError, match="runs"):
        logic.segment(case.volume, runs=0)
    # No refinement stage would leave the downscaled stage's output blown up (most of the crop labelled).
    with pytest.raises(ValueError, match="refinementSteps must be between 1 and 100, not 0"):
        logic.segment(case.volume, refinement_steps=0)


def test_cli_counts_and_marks_likely_failures(tmp_path, capsys) -> None:
    """A batch with a good scan and a scrambled one (no anatomy): the scrambled one's line starts
    with CHECK and names the signal once (not again as an empty result), the summary counts it,
    the volumes table marks it."""
    import csv

    import nibabel

    image, _ = hippocampus_paths(VALIDATION_CASE)
    nifti = nibabel.load(str(image))
    voxels = np.asarray(nifti.dataobj, dtype=np.float32)
    scrambled = np.random.default_rng(0).permutation(voxels.ravel()).reshape(voxels.shape)
    bad = tmp_path / "scrambled.nii.gz"
    nibabel.save(nibabel.Nifti1Image(scrambled, nifti.affine), str(bad))
    table = tmp_path / "volumes.csv"
    status = cli.main([str(image), str(bad), "-o", str(tmp_path / "out"), "--volumes", str(table),
                       "--seed", str(CARD["evaluation"]["seed"])])
    printed = capsys.readouterr().out
    assert status == 0
    assert any(line.startswith(f"ok     {VALIDATION_CASE}:") for line in printed.splitlines())
    assert any(line.startswith("CHECK  scrambled:") for line in printed.splitlines())
    assert "The segmentation is likely wrong: nothing segmented." in printed
    assert "is empty" not in printed  # said once, by the likely-failure message
    assert "summary: 2 of 2 segmented (1 with warnings: check it), 0 failed" in printed
    rows = {Path(row["input"]).name: row for row in csv.DictReader(table.open())}
    assert rows[image.name]["likely failure"] == "no" and rows["scrambled.nii.gz"]["likely failure"] == "yes"


def test_cli_segments_several_files_and_survives_a_bad_one(tmp_path, capsys) -> None:
    image, labels_path = hippocampus_paths(VALIDATION_CASE)
    missing = tmp_path / "missing.nii.gz"
    status = cli.main([str(image), str(missing), "-o", str(tmp_path / "out"), "--format", "nii.gz",
                       "--runs", str(CARD["evaluation"]["runs"]), "--seed", str(CARD["evaluation"]["seed"])])
    printed = capsys.readouterr().out
    assert status == 1
    assert "missing.nii.gz" in printed and "no such file. Check the path" in printed
    assert "1 of 2 segmented" in printed and "quality score" in printed
    import nibabel

    written = np.asarray(nibabel.load(str(tmp_path / "out" / f"{VALIDATION_CASE}.nii.gz")).dataobj)
    truth = np.asarray(nibabel.load(str(labels_path)).dataobj)
    assert written.shape == truth.shape and set(np.unique(written)) <= {0, 1, 2}
    assert abs(dice(written > 0, truth > 0) - CARD_DICE[VALIDATION_CASE]["dice_foreground"]) <= 0.02


def test_quality_score_flags_an_implausible_input_but_not_a_good_one(scene, logic) -> None:
    """NQM against the card's threshold: a validation T1 passes; the same voxels in random order
    (an image with no anatomy, as from a wrong series or a broken file) are flagged."""
    case = load_case(scene, VALIDATION_CASE)
    runs, seed = CARD["evaluation"]["runs"], CARD["evaluation"]["seed"]
    good = logic.segment(case.volume, runs=runs, seed=seed)
    assert good.quality_warning_threshold == CARD["quality_warning_threshold"]
    assert not good.likely_failure and not good.warnings
    scrambled = np.random.default_rng(0).permutation(case.image.ravel()).reshape(case.image.shape)
    noise = write_scalar_volume(scene, scrambled.astype(np.float32), case.geometry, "scrambled")
    bad = logic.segment(noise, runs=runs, seed=seed)
    assert bad.likely_failure
    assert "likely wrong" in bad.warnings[0] and "an ROI box around one hippocampus" in bad.warnings[0]
    # With an ROI box drawn, the advice is to check that box, not to draw one.
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    low, high = case.geometry.voxel_to_ras((0, 0, 0)), case.geometry.voxel_to_ras(np.array(case.geometry.shape_ijk) - 1)
    roi.SetCenter(*((low + high) / 2))
    roi.SetSize(*(np.abs(high - low) + 0.5))
    boxed = logic.segment(noise, roi=roi, runs=runs, seed=seed)
    assert boxed.likely_failure
    assert "check that the ROI box holds one whole hippocampus" in boxed.warnings[0]


def test_after_one_run_an_empty_part_or_an_implausible_volume_is_still_named(scene, logic) -> None:
    """One run gives no score; an empty part of what was segmented (every hippocampus has both) is
    still named, a wholly empty result said once, and a part far outside the plausible volumes
    (a few mm3) makes the result a likely failure, as with a score."""
    case = load_case(scene, VALIDATION_CASE)
    scrambled = np.random.default_rng(0).permutation(case.image.ravel()).reshape(case.image.shape)
    noise = write_scalar_volume(scene, scrambled.astype(np.float32), case.geometry, "scrambled")
    named = implausible = 0
    for seed in range(4):
        result = logic.segment(noise, runs=1, seed=seed)
        volumes = result.volumes.segments_mm3
        empty = [name for name, mm3 in volumes.items() if not mm3]
        tiny = [name for name, mm3 in volumes.items() if 0 < mm3 < 496]  # below every plausible range
        assert result.likely_failure == bool(tiny)
        if tiny:
            assert result.warnings[0].startswith("The segmentation is likely wrong: implausible volume (")
            assert all(name in result.warnings[0] for name in tiny)
            implausible += 1
        assert sum(w.startswith("One run gives no quality scores") for w in result.warnings) == 1
        if len(empty) == len(volumes):
            assert sum("is empty" in w for w in result.warnings) == 1
        elif empty:
            assert (f"Nothing was segmented as {', '.join(empty)}, though every hippocampus has both parts: the "
                    "result is incomplete. Check it; an ROI box around one hippocampus (--roi with mednca-segment), "
                    "or more steps, can help.") in result.warnings
            named += 1
    assert named and implausible  # the scrambled image leaves a part empty, and one tiny, for some seed


def test_structure_spread_is_the_benchmarks_signal_and_is_recorded(scene, logic) -> None:
    """The logic's second quality signal is the robustness benchmark's "spread inside the
    predicted structure" (the one its threshold was chosen on), stored on the node, below the
    card's threshold on a validation case, and absent after one run."""
    from MedNCASegmentLib.inference import segment, structure_spread
    from MedNCASegmentLib.model_io import load_model

    case = load_case(scene, VALIDATION_CASE)
    runs, seed = CARD["evaluation"]["runs"], CARD["evaluation"]["seed"]
    result = logic.segment(case.volume, runs=runs, seed=seed)
    direct = segment(load_model(MODELS / CARD["model"])[0], case.image, runs=runs, seed=seed)
    expected = structure_spread(direct.std.sum(axis=0), direct.labels())
    assert set(result.structure_spread) == {"structure"}
    assert result.structure_spread["structure"] == pytest.approx(expected, abs=1e-4)
    assert result.structure_spread_warning_threshold == CARD["structure_spread_warning_threshold"]
    assert result.structure_spread["structure"] < result.structure_spread_warning_threshold
    stored = result.segmentation.GetAttribute(f"{STRUCTURE_SPREAD_ATTRIBUTE}.structure")
    assert float(stored) == pytest.approx(expected, abs=1e-4)
    single = logic.segment(case.volume, runs=1, seed=seed)
    assert single.structure_spread == {"structure": None} and not single.likely_failure
