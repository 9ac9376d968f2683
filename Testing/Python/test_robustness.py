"""The robustness benchmark's parts on real data: each artefact changes a real case (and only the
copy), the field-of-view crop puts the structure at the edge, the Dice agrees with the metrics
module, and the failure-detector statistics are right on hand-checkable numbers."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import DATA_ROOT, REPO_ROOT, hippocampus_paths
from EfficientSegmentationCommon.metrics import dice

pytest.importorskip("torchio", reason="the robustness benchmark needs torchio (pip install -e '.[benchmark]')")
sys.path.insert(0, str(REPO_ROOT / "Testing" / "Benchmarks"))
import robustness_benchmark as rb  # noqa: E402

CASE = "hippocampus_006"


@pytest.fixture(scope="module")
def case() -> rb.Input:
    from MedNCASegmentLib.data import load_case

    hippocampus_paths(CASE)  # fails with a clear message if the data is missing
    loaded = load_case(DATA_ROOT / "Task04_Hippocampus", CASE)
    return rb.Input(CASE, [loaded.image], loaded.labels, (1.0, 1.0, 1.0))


@pytest.mark.parametrize("artefact", [a for a in rb.ARTEFACTS if a != "field-of-view edge"])
def test_artefact_changes_the_image_not_the_input(case, artefact):
    original = case.images[0].copy()
    changes = []
    for level in rb.LEVELS:
        corrupted = rb.corrupt(case, artefact, level)
        image = corrupted.images[0]
        assert image.shape == original.shape and image.dtype == np.float32
        assert np.isfinite(image).all()
        assert corrupted.labels is case.labels  # the grid is kept, so are the labels
        changes.append(float(np.abs(image - original).mean() / original.std()))
        assert changes[-1] > 1e-3, f"{artefact} {level} left the image unchanged"
        # Fixed seeds: the same corruption every time.
        np.testing.assert_array_equal(rb.corrupt(case, artefact, level).images[0], image)
    np.testing.assert_array_equal(case.images[0], original)


def test_field_of_view_edge_moves_the_structure_to_the_edge(case):
    for level in rb.LEVELS:
        margin = rb.ARTEFACTS["field-of-view edge"][level]["margin"]
        moved = rb.corrupt(case, "field-of-view edge", level)
        assert moved.images[0].shape == moved.labels.shape
        assert moved.images[0].shape[1] < case.images[0].shape[1] and moved.images[0].shape[2] < case.images[0].shape[2]
        present = np.argwhere(moved.labels > 0)
        assert present[:, 1].min() == margin and present[:, 2].min() == margin
        # Nothing labelled was cut away, and the image is the same voxels as before.
        assert (moved.labels > 0).sum() == (case.labels > 0).sum()
        offset = (case.images[0].shape[1] - moved.images[0].shape[1], case.images[0].shape[2] - moved.images[0].shape[2])
        np.testing.assert_array_equal(moved.images[0], case.images[0][:, offset[0]:, offset[1]:])


def test_brats_inputs_keep_their_scale(case):
    """Both OSS-Net inputs get the same artefact; the background of skull-stripped inputs stays."""
    from OSSNetSegmentLib.data import load_case

    loaded = load_case(DATA_ROOT / "BraTS_sample", "brats_2013_pat0006_1")
    box = (slice(60, 92), slice(80, 144), slice(20, 84))  # the brain's edge: head and background
    item = rb.Input(loaded.case_id, [np.ascontiguousarray(i[box]) for i in loaded.images],
                    np.ascontiguousarray(loaded.labels[box]), loaded.spacing, skull_stripped=True)
    for artefact in ("bias field", "noise", "ghosting"):
        corrupted = rb.corrupt(item, artefact, "moderate")
        for before, after in zip(item.images, corrupted.images, strict=True):
            background = before == before.min()
            assert background.any() and not np.array_equal(before, after)
            # Still skull-stripped: the background constant and below every head voxel.
            assert len(np.unique(after[background])) == 1 and after[background][0] < after[~background].min()
            assert abs(float(np.median(after[~background])) - float(np.median(before[~background]))) < before.std()


def test_region_dice_agrees_with_metrics(case):
    truth = case.labels
    # A real disagreement: the expert labels shifted by two voxels along J, the classes swapped in a slab.
    predicted = np.roll(truth, 2, axis=1)
    predicted[:10] = np.where(predicted[:10] > 0, 3 - predicted[:10], 0)
    scores = rb.region_dice(predicted, truth, rb.HIPPOCAMPUS_REGIONS)
    assert scores["foreground"] == pytest.approx(dice(predicted > 0, truth > 0))
    assert scores["anterior"] == pytest.approx(dice(predicted == 1, truth == 1))
    assert scores["posterior"] == pytest.approx(dice(predicted == 2, truth == 2))
    assert 0.3 < scores["foreground"] < 0.95 and scores["anterior"] < scores["foreground"]


def test_failure_detector_statistics():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    failure = [False, False, True, False, True, True]
    # Pairs (failure, success) where the failure scores higher: 0.3 > 0.1, 0.2; 0.5 and 0.6 > all three.
    assert rb.roc_auc(scores, failure) == pytest.approx(8 / 9)
    rates = rb.flag_rates(scores, failure, 0.35)
    assert rates == {"sensitivity": pytest.approx(2 / 3), "specificity": pytest.approx(2 / 3), "flagged": 3}
    threshold = rb.threshold_for_sensitivity(scores, failure, 0.9)  # all three failures: just below 0.3
    assert threshold == pytest.approx(0.2999)
    assert rb.flag_rates(scores, failure, threshold)["sensitivity"] == 1.0
    assert rb.threshold_for_sensitivity(scores, [False] * 6, 0.9) is None
    assert np.isnan(rb.roc_auc(scores, [False] * 6))


def test_leave_one_case_out_judges_each_case_by_the_others():
    scores = [0.1, 0.5, 0.2, 0.6, 0.1, 0.3]
    failure = [False, True, False, True, False, True]
    cases = ["a", "a", "b", "b", "c", "c"]
    # Held out a: threshold from b, c's failures (0.6, 0.3) -> 0.2999, flags 0.5 (yes) and 0.1 (no); held out
    # b: from 0.5, 0.3 -> 0.2999, flags 0.6, not 0.2; held out c: from 0.5, 0.6 -> 0.4999: misses 0.3.
    assert rb.leave_one_case_out(scores, failure, cases, 0.9) == {"sensitivity": pytest.approx(2 / 3),
                                                                   "specificity": 1.0}


def test_carried_labels_show_what_an_artefact_does_to_the_anatomy(case):
    """The labels carried through an intensity-only artefact are the labels (Dice 1); motion,
    blur and thick slices move or blur them (Dice below 1, lower at the strong blur)."""
    assert rb.carried_labels_dice(case, "gamma", "strong", rb.HIPPOCAMPUS_REGIONS) == {
        "foreground": 1.0, "anterior": 1.0, "posterior": 1.0}
    for artefact in rb.GEOMETRIC_ARTEFACTS:
        scores = rb.carried_labels_dice(case, artefact, "moderate", rb.HIPPOCAMPUS_REGIONS)
        assert 0.8 < scores["foreground"] < 1.0, (artefact, scores)
    blur = [rb.carried_labels_dice(case, "blur", level, rb.HIPPOCAMPUS_REGIONS)["foreground"] for level in rb.LEVELS]
    assert blur[1] < blur[0]
    lines = rb.carried_labels_table([case], ["noise", "blur"], ["moderate"], rb.HIPPOCAMPUS_REGIONS)
    assert len(lines) == 3 and lines[2].startswith(f"| blur | moderate | {blur[0]:.4f} |")


def test_thick_slices_blur_across_k_and_move_nothing(case):
    """Thick slices (augmentation.thick_slices, the benchmark's and the training's) average across
    K without moving anything: a ramp along K keeps its values inside the volume for every length
    and thickness (torchio's RandomAnisotropy moved some lengths half a voxel), and the
    real case's labelled structure keeps its mass and centre while its K profile widens."""
    import torch
    from MedNCASegmentLib.augmentation import thick_slices
    from scipy import ndimage

    for length in range(30, 46):
        ramp = torch.arange(length, dtype=torch.float32).expand(1, 8, 8, length)
        for factor in (2.3, 3.0, 5.0):
            offset = (thick_slices(ramp, factor) - ramp)[0, 4, 4, 6:-6]
            assert float(offset.abs().max()) < 0.05, (length, factor)
    structure = torch.from_numpy(np.ascontiguousarray((case.labels > 0).T[None], dtype=np.float32))  # (1, I, J, K)
    centre = np.array(ndimage.center_of_mass(structure[0].numpy()))
    for level in rb.LEVELS:
        thick = thick_slices(structure, rb.ARTEFACTS["thick slices"][level]["downsampling"])[0].numpy()
        assert thick.sum() == pytest.approx(float(structure.sum()), rel=0.02)
        assert np.abs(np.array(ndimage.center_of_mass(thick)) - centre).max() < 0.05
        assert (thick.sum(axis=(0, 1)) > 0.01).sum() > (structure[0].numpy().sum(axis=(0, 1)) > 0).sum()  # wider in K
        assert ((thick.sum(axis=(1, 2)) > 0.01) == (structure[0].numpy().sum(axis=(1, 2)) > 0)).all()  # not in I


def test_training_artefact_copies_change_a_real_case_reproducibly(case):
    """The training augmentation's artefact copies (augmentation.artefact_copies): each differs
    from the clean image where the structure is (a spike copy too: one spike, never none), the
    input is untouched, the same seed gives the same copies and another seed others."""
    from MedNCASegmentLib.augmentation import artefact_copies

    image = case.images[0]
    before = image.copy()
    copies = artefact_copies(image, 4, seed=3)
    np.testing.assert_array_equal(image, before)
    assert all(c.shape == image.shape and c.dtype == np.float32 for c in copies)
    changed = [float(np.abs(c - image)[case.labels > 0].mean()) for c in copies]
    assert all(change > 1e-3 * float(image.max()) for change in changed), changed
    again = artefact_copies(image, 4, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(copies, again, strict=True))
    other = artefact_copies(image, 4, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(copies, other, strict=True))


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_training_draws_artefact_copies_at_the_given_share(case, share):
    """``--artefact-share``: the share of training samples drawn from a copy with an artefact."""
    from types import SimpleNamespace

    from MedNCASegmentLib.training import Sampler

    cases = [SimpleNamespace(image=case.images[0], labels=case.labels)]
    sampler = Sampler(cases, 2, (64, 48), 1, np.random.default_rng(0), artefact_copies_per_case=2, seed=1,
                      artefact_share=share)
    drawn = np.array([sampler._variant(0) for _ in range(2000)])
    assert set(np.unique(drawn)) <= {0, 1, 2}
    assert (drawn > 0).mean() == pytest.approx(share, abs=0.04)


def test_quality_analysis_reports_the_logics_rule():
    """The shipped warning is scored as the logic applies it: the spread above its registry
    threshold, an empty part of a segmented structure or a part outside its plausible volume (a
    failure only NQM catches is missed, and listed); NQM only for an entry without a spread
    threshold."""
    rows = [{"model": "Med-NCA", "case": f"c{i}", "artefact": "clean", "level": "", "dice_foreground": dice_value,
             "nqm": [nqm, nqm], "spread_inside": spread, "volume": 3000, "part_volumes": parts}
            for i, (dice_value, nqm, spread, parts) in enumerate([
                (0.9, 0.05, 0.03, [1500, 1500]), (0.9, 0.06, 0.04, [1500, 1500]), (0.7, 0.3, 0.03, [1500, 1500]),
                (0.75, 0.05, 0.08, [1500, 1500]), (0.79, 0.05, 0.04, [1500, 1500]), (0.6, 0.05, 0.03, [0, 3000]),
                (0.5, 0.05, 0.03, [1500, 9000])])]
    segments = [{"name": "anterior", "plausibleVolumeMm3": [527, 5186]}, {"name": "posterior", "plausibleVolumeMm3": [496, 4338]}]
    entry = {"qualityWarningThreshold": 0.1561, "structureSpreadWarningThreshold": 0.0548, "segments": segments}
    lines, report = rb.quality_analysis(rows, entry, None)
    # The spread flags 0.75; the empty part 0.6; the implausible posterior 0.5; NQM's 0.7 and the
    # borderline 0.79 are missed.
    assert report["shipped_rule"] == {"sensitivity": pytest.approx(3 / 5), "specificity": 1.0, "flagged": 3,
                                      "signal": "spread inside the structure"}
    assert "Failures the logic's warning misses: 2, foreground Dice 0.700 to 0.790." in lines
    _, nqm_only = rb.quality_analysis(rows, {"qualityWarningThreshold": 0.1561}, None)  # no ranges either
    assert nqm_only["shipped_rule"] == {"sensitivity": pytest.approx(2 / 5), "specificity": 1.0, "flagged": 2,
                                        "signal": "NQM (largest of the classes)"}


def test_training_refuses_an_artefact_share_outside_zero_to_one_and_negative_copies(capsys):
    from MedNCASegmentLib.training import parse_args

    required = ["--work-dir", "work", "--output", "weights.pt"]
    assert parse_args([*required, "--artefact-share", "0.3"]).artefact_share == 0.3
    with pytest.raises(SystemExit):
        parse_args([*required, "--artefact-share", "1.5"])
    assert "--artefact-share must be a fraction from 0 to 1, not 1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args([*required, "--artefact-copies", "-1"])
    assert "--artefact-copies must be 0 or more, not -1" in capsys.readouterr().err
