"""Robustness to MRI artefacts and shifts, and the quality score as a failure detector; prints tables.

    PYTHONPATH=Resources/Python:MedNCASegment:OSSNetSegment python Testing/Benchmarks/robustness_benchmark.py \
        --unet runs/unet_baseline/unet_baseline.pt --cases 12 --threads 1 --json runs/robustness.json

Needs torchio (``pip install -e '.[benchmark]'``), which makes the artefacts. Every validation
input (``hippocampus_split.json``; OSS-Net: ``brats_split.json``, case pat0006) is segmented
clean and with each artefact of :data:`ARTEFACTS` at a moderate and a strong level, by
- Med-NCA (the shipped weights, ``--runs`` stochastic runs, the shipped post-processing),
- the 2D UNet baseline (``unet_baseline.py``, with the largest structure kept like Med-NCA),
  when ``--unet`` weights are given,
- OSS-Net (the shipped weights, the input's 1 mm grid), unless ``--no-ossnet``.
Reported per artefact and level: Dice per class (mean and worst case) and its drop from clean
(clean mean minus corrupted mean: positive is worse), all dense whole-volume hard Dice
(``EfficientSegmentationCommon.metrics.dice``) against the expert labels (cropped with the
image for the field-of-view artefact).

Quality score as a failure detector: over every Med-NCA result (clean and corrupted) a result
is a failure when its foreground Dice is below :data:`FAILURE_DICE` (the rule of
``MedNCASegmentLib.evaluation``). For each signal (the shipped NQM, the largest of the
classes' NQM as the logic warns, and alternatives) the ROC AUC (Mann-Whitney U / (failures x
successes)) and, for NQM, the sensitivity and specificity at the shipped threshold
(``qualityWarningThreshold`` in ``Resources/Models.json``) and at the threshold re-chosen here:
the largest value that still flags at least :data:`TARGET_SENSITIVITY` of the failures; the same for
the spread inside the predicted structure (``structureSpreadWarningThreshold``), and the
logic's warning (the spread above its threshold, an empty part of a segmented structure, or a
part outside its plausible volume; NQM only for a model without a spread threshold).
OSS-Net's candidate signal (the share of uncertain voxels, probability in [0.25, 0.75], among
those it calls tumour) is printed per result; with one validation case it cannot be validated.

Artefacts are torchio transforms with fixed parameters (:data:`ARTEFACTS`) on intensities scaled
to [0, 1] by the image's minimum and 99.5th percentile (and scaled back), so that noise, spike and gamma
mean the same on raw T1 values and on z-scored BraTS inputs; each (case, artefact, level) draws
its random parts (noise field, motion, bias coefficients) from its own fixed seed. The same
corrupted input goes to every model. Times: other processes on the machine slow them down.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = Path(os.environ.get("EFFSEG_DATA", REPO.parent / "shared" / "data"))  # as for the tests
DEFAULT_NCA = REPO / "MedNCASegment" / "Resources" / "Models" / "mednca2d_hippocampus.pt"
DEFAULT_SPLIT = REPO / "MedNCASegment" / "Resources" / "Models" / "hippocampus_split.json"
DEFAULT_OSSNET = REPO / "OSSNetSegment" / "Resources" / "Models" / "ossnet_brats_wholetumour.pt"
DEFAULT_BRATS_SPLIT = REPO / "OSSNetSegment" / "Resources" / "Models" / "brats_split.json"
REGISTRY = REPO / "Resources" / "Models.json"
HIPPOCAMPUS_REGIONS = {"foreground": (1, 2), "anterior": (1,), "posterior": (2,)}
TUMOUR_REGIONS = {"whole tumour": (1, 2, 3, 4)}
# A result with a foreground Dice below this is a failure (as in MedNCASegmentLib.evaluation).
FAILURE_DICE = 0.8
# The re-chosen warning thresholds flag at least this share of the failures.
TARGET_SENSITIVITY = 0.9
LEVELS = ("moderate", "strong")
# The extent (mm) over which a bias field of the given coefficients varies: a head.
HEAD_EXTENT_MM = 200.0

# name -> level -> parameters. Intensity artefacts act on the image scaled to [0, 1] (minimum to
# 99.5th percentile; tissue of the hippocampus crops is then about 0.3-0.7); sizes in mm
# (all data here is 1 mm). torchio axes are the image's I, J, K; Med-NCA slices along K.
ARTEFACTS: dict[str, dict[str, dict]] = {
    # Gaussian noise, std as a fraction of the image's 99.5th percentile (see corrupt).
    "noise": {"moderate": {"std": 0.03}, "strong": {"std": 0.08}},
    # k-space ghosts along J (phase encoding): 4 ghosts of the given intensity.
    "ghosting": {"moderate": {"num_ghosts": 4, "intensity": 0.4}, "strong": {"num_ghosts": 4, "intensity": 1.0}},
    # one k-space spike (herringbone pattern) of the given intensity.
    "spike": {"moderate": {"num_spikes": 1, "intensity": 0.3}, "strong": {"num_spikes": 1, "intensity": 1.0}},
    # smooth multiplicative field: cubic polynomial (log domain) over the image's extent, coefficients
    # uniform in [-c, c] with c = the value here x min(1, largest extent / HEAD_EXTENT_MM): torchio
    # spans the field over the image, so without the factor a 40 mm crop would get a whole head's
    # variation (exact for the linear terms; the higher ones stay stronger than a head's).
    "bias field": {"moderate": {"coefficients": 0.3}, "strong": {"coefficients": 0.7}},
    # patient motion during the scan: at 35% of k-space the head turns by this many degrees about K
    # and moves this many mm along I, at 70% it comes back halfway (torchio's Motion, fixed).
    "motion": {"moderate": {"degrees": 3.0, "translation": 3.0}, "strong": {"degrees": 8.0, "translation": 8.0}},
    # Gaussian blur, std in mm along every axis.
    "blur": {"moderate": {"std": 0.75}, "strong": {"std": 1.5}},
    # contrast change I -> I ** gamma on [0, 1]; log(gamma) given (gamma 1.35 and 2.0).
    "gamma": {"moderate": {"log_gamma": 0.3}, "strong": {"log_gamma": 0.7}},
    # thick slices across the model's slicing axis (K): slices this many voxels thick and apart,
    # interpolated back (MedNCASegmentLib.augmentation.thick_slices; until 2026-12-01 torchio's
    # RandomAnisotropy, which moved some crops half a voxel against their labels).
    "thick slices": {"moderate": {"downsampling": 3.0}, "strong": {"downsampling": 5.0}},
    # the structure at the edge of the field of view: cropped on the low-I and low-J sides to this
    # many voxels from the labelled structure (0: the structure touches the edge).
    "field-of-view edge": {"moderate": {"margin": 3}, "strong": {"margin": 0}},
}


@dataclass
class Input:
    """One model input: images (KJI, float32), expert labels (KJI, uint8), spacing (I, J, K mm).

    ``skull_stripped``: the images' background is constant (their minimum), as in the BraTS
    inputs; artefacts then leave it so, as skull stripping after the scan would: constant and
    below every head voxel (OSS-Net tells head from background by it; an artefact that darkens a
    head voxel below the old background value lowers the background with it).
    """

    case_id: str
    images: list[np.ndarray]
    labels: np.ndarray
    spacing: tuple[float, float, float]
    skull_stripped: bool = False


def _seed(*parts: object) -> int:
    """A fixed seed for one (case, artefact, level), the same in every run and process."""
    return zlib.crc32("/".join(str(p) for p in parts).encode())


def _torchio():
    try:
        import torchio
    except ImportError as error:
        raise SystemExit("torchio is needed for the artefacts: pip install -e '.[benchmark]' "
                         "(or pip install torchio==1.2.1)") from error
    return torchio


def _intensity_transform(name: str, parameters: dict, extent_mm: float):
    """The torchio transform of an intensity artefact with fixed parameters (ranges of one value);
    ``extent_mm``: the image's largest extent."""
    tio = _torchio()
    p = parameters
    if name == "noise":
        return tio.RandomNoise(mean=0.0, std=(p["std"], p["std"]))
    if name == "ghosting":
        return tio.RandomGhosting(num_ghosts=(p["num_ghosts"], p["num_ghosts"]), axes=(1,),
                                  intensity=(p["intensity"], p["intensity"]))
    if name == "spike":
        return tio.RandomSpike(num_spikes=(p["num_spikes"], p["num_spikes"]), intensity=(p["intensity"], p["intensity"]))
    if name == "bias field":
        return tio.RandomBiasField(coefficients=p["coefficients"] * min(1.0, extent_mm / HEAD_EXTENT_MM), order=3)
    if name == "motion":
        degrees, translation = np.array([[0.0, 0.0, p["degrees"]]]), np.array([[p["translation"], 0.0, 0.0]])
        return tio.Motion(degrees=np.concatenate([degrees, degrees / 2]),
                          translation=np.concatenate([translation, translation / 2]),
                          times=np.array([0.35, 0.7]), image_interpolation="linear")
    if name == "blur":
        return tio.RandomBlur(std=(p["std"], p["std"]))
    if name == "gamma":
        return tio.RandomGamma(log_gamma=(p["log_gamma"], p["log_gamma"]))
    if name == "thick slices":
        from MedNCASegmentLib.augmentation import thick_slices

        return tio.Lambda(lambda tensor: thick_slices(tensor, p["downsampling"]))
    raise ValueError(f"unknown artefact {name!r}; known: {', '.join(ARTEFACTS)}")


def field_of_view_edge(item: Input, margin: int) -> Input:
    """The input cropped on its low-I and low-J sides to ``margin`` voxels from the labelled
    structure, so that it lies at the edge of the field of view (labels cropped alike)."""
    present = np.argwhere(item.labels > 0)
    if not len(present):
        raise ValueError(f"{item.case_id}: no labelled structure to move to the edge")
    _, j0, i0 = present.min(axis=0)
    box = (slice(None), slice(max(0, j0 - margin), None), slice(max(0, i0 - margin), None))
    return Input(item.case_id, [np.ascontiguousarray(image[box]) for image in item.images],
                 np.ascontiguousarray(item.labels[box]), item.spacing, item.skull_stripped)


def corrupt(item: Input, artefact: str, level: str) -> Input:
    """``item`` with one artefact at one level (see :data:`ARTEFACTS`); the input is not modified.

    Every image of the input gets the same transform with the same random draw (one torchio
    subject). Intensity artefacts and thick slices keep the grid, so the labels stay as they are.
    Raises ValueError for an unknown artefact or level.
    """
    if artefact not in ARTEFACTS or level not in ARTEFACTS[artefact]:
        raise ValueError(f"unknown artefact or level {artefact!r}/{level!r}; known: {', '.join(ARTEFACTS)}, {LEVELS}")
    parameters = ARTEFACTS[artefact][level]
    if artefact == "field-of-view edge":
        return field_of_view_edge(item, parameters["margin"])
    import torch

    tio = _torchio()
    affine = np.diag([*item.spacing, 1.0])
    scaled, ranges = {}, []
    for index, image in enumerate(item.images):
        # The 99.5th percentile, not the maximum: a few bright voxels would shrink tissue towards 0.
        low, high = float(image.min()), float(np.percentile(image, 99.5))
        ranges.append((low, high))
        unit = (image - low) / (high - low if high > low else 1.0)
        # KJI -> torchio's (channels, I, J, K)
        scaled[f"image{index}"] = tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(unit.T[None])).float(),
                                                  affine=affine)
    torch.manual_seed(_seed(item.case_id, artefact, level))
    extent = max(n * s for n, s in zip(item.images[0].shape[::-1], item.spacing, strict=True))
    transformed = _intensity_transform(artefact, parameters, extent)(tio.Subject(**scaled))
    images = []
    for index, (low, high) in enumerate(ranges):
        unit = transformed[f"image{index}"].data[0].numpy().T  # back to KJI
        image = np.ascontiguousarray(unit * (high - low) + low, dtype=np.float32)
        if item.skull_stripped:  # the background constant and the image's minimum again
            background = item.images[index] == low
            image[background] = min(low, float(image[~background].min()) - 1e-3) if (~background).any() else low
        images.append(image)
    return Input(item.case_id, images, item.labels, item.spacing, item.skull_stripped)


# Artefacts that move or blur the anatomy itself (the others change intensities only).
GEOMETRIC_ARTEFACTS = ("motion", "blur", "thick slices")


def carried_labels_dice(item: Input, artefact: str, level: str, regions: dict[str, Sequence[int]]) -> dict[str, float]:
    """Dice per region of the expert labels carried through the artefact against themselves.

    Each region's mask goes through :func:`corrupt` as an image (0 and 1) and is thresholded at
    one half: what the corrupted image shows of the structure. Motion, blur and thick slices move
    or blur the anatomy, so a model that segmented exactly what the image shows, at that
    threshold, would score about this against the labels drawn on the clean image. A reference
    for a drop, not a bound: a model can undo some blur.
    """
    from EfficientSegmentationCommon.metrics import dice

    scores = {}
    for region, labels in regions.items():
        mask = np.isin(item.labels, labels)
        carried = corrupt(Input(item.case_id, [mask.astype(np.float32)], item.labels, item.spacing), artefact, level)
        scores[region] = dice(carried.images[0] > 0.5, mask)
    return scores


def carried_labels_table(inputs: list[Input], artefacts: Sequence[str], levels: Sequence[str],
                         regions: dict[str, Sequence[int]]) -> list[str]:
    """Mean :func:`carried_labels_dice` per geometric artefact among ``artefacts`` and level, over ``inputs``."""
    head = " | ".join(regions)
    lines = [f"| artefact | level | {head} |", "|---|---|" + "---:|" * len(regions)]
    for artefact in (a for a in artefacts if a in GEOMETRIC_ARTEFACTS):
        for level in levels:
            scores = [carried_labels_dice(item, artefact, level, regions) for item in inputs]
            lines.append(f"| {artefact} | {level} | "
                         + " | ".join(f"{np.mean([s[r] for s in scores]):.4f}" for r in regions) + " |")
    return lines


def region_dice(predicted: np.ndarray, truth: np.ndarray, regions: dict[str, Sequence[int]]) -> dict[str, float]:
    """Dice (``metrics.dice``) of each region, a set of label values, of two (D, H, W) label maps."""
    from EfficientSegmentationCommon.metrics import dice

    return {name: dice(np.isin(predicted, values), np.isin(truth, values)) for name, values in regions.items()}


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for telling ``positive`` results (high scores) from the
    rest: the Mann-Whitney U statistic over (positives x negatives), ties counting half. NaN when
    one group is empty."""
    from scipy.stats import mannwhitneyu

    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return float("nan")
    statistic = mannwhitneyu(scores[positive], scores[~positive], alternative="two-sided").statistic
    return float(statistic / (positive.sum() * (~positive).sum()))


def flag_rates(scores: Sequence[float], positive: Sequence[bool], threshold: float) -> dict[str, float]:
    """Sensitivity (flagged failures / failures) and specificity (unflagged successes / successes)
    of the rule "flag when the score is above ``threshold``"."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    flagged = scores > threshold
    return {"sensitivity": float(flagged[positive].mean()) if positive.any() else float("nan"),
            "specificity": float((~flagged[~positive]).mean()) if (~positive).any() else float("nan"),
            "flagged": int(flagged.sum())}


def threshold_for_sensitivity(scores: Sequence[float], positive: Sequence[bool], target: float) -> float | None:
    """The largest threshold whose rule "score above it" flags at least ``target`` of the positives:
    just below the score of the k-th highest positive, k = ceil(target x positives), rounded down
    to 4 decimals. None without positives."""
    values = np.sort(np.asarray(scores, float)[np.asarray(positive, bool)])[::-1]
    if not len(values):
        return None
    k = int(np.ceil(target * len(values) - 1e-9))
    return float(np.floor(values[k - 1] * 1e4 - 1e-6) / 1e4)


# ---------------------------------------------------------------------------------------------
# Models

def hippocampus_inputs(data: Path, split: Path, count: int | None, skip: int = 0, part: str = "validation") -> list[Input]:
    """The cases of one ``part`` of the split ("validation" or "train"), from the ``skip``-th on,
    at most ``count`` of them (None: all)."""
    from MedNCASegmentLib.data import load_case

    ids = json.loads(split.read_text())[part][skip:]
    ids = ids[:count] if count else ids
    return [Input(c.case_id, [c.image], c.labels, (1.0, 1.0, 1.0)) for c in (load_case(data, i) for i in ids)]


def training_volumes(data: Path, split: Path) -> np.ndarray:
    """Foreground voxel counts of the training cases' expert labels (the volume-plausibility signal)."""
    import nibabel

    ids = json.loads(split.read_text())["train"]
    return np.array([int((np.asarray(nibabel.load(str(data / "labelsTr" / f"{i}.nii.gz")).dataobj) > 0).sum())
                     for i in ids])


def nca_runner(weights: Path, runs: int, seed: int) -> Callable[[Input], dict]:
    """Med-NCA as shipped: ``runs`` runs (mirrored halves), largest structure kept; labels, NQM per
    class and the spread inside the predicted structure."""
    from MedNCASegmentLib.inference import segment, structure_spread
    from MedNCASegmentLib.model_io import load_model

    model, _ = load_model(weights)

    def run(item: Input) -> dict:
        result = segment(model, item.images[0], runs=runs, seed=seed)
        labels = result.labels()
        inside = structure_spread(result.std.sum(axis=0), labels)
        # An empty result counts as flagged (the logic warns of it separately).
        return {"labels": labels, "nqm": [float(q) for q in result.quality],
                "spread_inside": 1.0 if inside is None else inside, "volume": int((labels > 0).sum()),
                "part_volumes": [int((labels == label).sum()) for label in range(1, len(result.quality) + 1)]}
    return run


def unet_runner(weights: Path) -> Callable[[Input], dict]:
    """The 2D UNet baseline with the largest structure kept (as Med-NCA)."""
    sys.path.insert(0, str(HERE))
    import unet_baseline
    from MedNCASegmentLib.inference import keep_largest_component

    model = unet_baseline.load_unet(weights)

    def run(item: Input) -> dict:
        return {"labels": keep_largest_component(unet_baseline.segment_unet(model, item.images[0])[0])}
    return run


def ossnet_runner(weights: Path) -> Callable[[Input], dict]:
    """OSS-Net on the input's grid with probabilities; labels and the share of uncertain voxels."""
    from OSSNetSegmentLib.inference import segment
    from OSSNetSegmentLib.model_io import load_model

    model, _ = load_model(weights)

    def run(item: Input) -> dict:
        result = segment(model, item.images, item.spacing, return_probabilities=True)
        called = result.labels > 0
        uncertain = (result.probabilities >= 0.25) & (result.probabilities <= 0.75)
        return {"labels": result.labels, "uncertain_share": float(uncertain.sum() / max(1, called.sum())),
                "volume": int(called.sum())}
    return run


def brats_inputs(data: Path, split: Path) -> list[Input]:
    from OSSNetSegmentLib.data import load_case

    cases = [load_case(data, i) for i in json.loads(split.read_text())["validation"]]
    return [Input(c.case_id, c.images, c.labels, c.spacing, skull_stripped=True) for c in cases]


def evaluate(runners: dict[str, Callable[[Input], dict]], inputs: list[Input], conditions: list[tuple[str, str]],
             regions: dict[str, Sequence[int]], log: Callable[[str, dict], None]) -> list[dict]:
    """Every model on every input under every (artefact, level) condition (("clean", "") first):
    one row per (model, case, condition) with Dice per region, seconds and the model's signals."""
    rows = []
    for item in inputs:
        for artefact, level in conditions:
            corrupted = item if artefact == "clean" else corrupt(item, artefact, level)
            for name, run in runners.items():
                started = time.perf_counter()
                output = run(corrupted)
                seconds = time.perf_counter() - started
                labels = output.pop("labels")
                row = {"model": name, "case": item.case_id, "artefact": artefact, "level": level,
                       "seconds": round(seconds, 3), **{f"dice_{k}": v for k, v in region_dice(labels, corrupted.labels,
                                                                                                regions).items()},
                       **output}
                rows.append(row)
                dices = ", ".join(f"{k} {v:.3f}" for k, v in region_dice(labels, corrupted.labels, regions).items())
                log(f"{name:8s} {item.case_id} {artefact} {level}: {dices} ({seconds:.1f} s)", row)
    return rows


# ---------------------------------------------------------------------------------------------
# Tables

def robustness_table(rows: list[dict], regions: Sequence[str]) -> list[str]:
    """Per model, artefact and level: Dice mean and worst per region, and the drop of the mean from clean."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    head = " | ".join(f"{r} mean | {r} worst | {r} drop" for r in regions)
    lines = [f"| model | artefact | level | cases | {head} |", "|---|---|---|---:|" + "---:|" * 3 * len(regions)]
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        clean = {region: np.mean([r[f"dice_{region}"] for r in mine if r["artefact"] == "clean"]) for region in regions}
        for condition in dict.fromkeys((r["artefact"], r["level"]) for r in mine):
            these = [r for r in mine if (r["artefact"], r["level"]) == condition]
            cells = []
            for region in regions:
                values = np.array([r[f"dice_{region}"] for r in these])
                drop = clean[region] - values.mean()
                cells.append(f"{values.mean():.4f} | {values.min():.4f} | {'-' if condition[0] == 'clean' else f'{drop:+.4f}'}")
            lines.append(f"| {model} | {condition[0]} | {condition[1] or '-'} | {len(these)} | {' | '.join(cells)} |")
    return lines


def leave_one_case_out(scores: Sequence[float], positive: Sequence[bool], cases: Sequence[str],
                       target: float) -> dict[str, float]:
    """How the threshold rule of :func:`threshold_for_sensitivity` holds on unseen cases: for each
    case, the threshold chosen on the other cases' results flags (or not) this case's results;
    sensitivity and specificity over all those held-out decisions. A case whose training part
    has no positives keeps no threshold (nothing flagged)."""
    scores, positive, cases = np.asarray(scores, float), np.asarray(positive, bool), np.asarray(cases)
    flagged = np.zeros(len(scores), bool)
    for case in dict.fromkeys(cases.tolist()):
        held = cases == case
        threshold = threshold_for_sensitivity(scores[~held], positive[~held], target)
        flagged[held] = scores[held] > threshold if threshold is not None else False
    return {"sensitivity": float(flagged[positive].mean()) if positive.any() else float("nan"),
            "specificity": float((~flagged[~positive]).mean()) if (~positive).any() else float("nan")}


def quality_analysis(rows: list[dict], entry: dict, typical_volumes: np.ndarray | None) -> tuple[list[str], dict]:
    """The quality signals of Med-NCA's results as failure detectors (see the module docstring);
    ``entry`` is the model's registry entry (its shipped warning thresholds)."""
    nca = [r for r in rows if r["model"] == "Med-NCA"]
    failure = np.array([r["dice_foreground"] < FAILURE_DICE for r in nca])
    nqm_max = np.array([max(r["nqm"]) for r in nca])
    spread_inside = np.array([r["spread_inside"] for r in nca])
    signals = {"NQM, largest of the classes (the shipped warning)": nqm_max,
               "NQM, mean of the classes": np.array([np.mean(r["nqm"]) for r in nca]),
               "spread inside the predicted structure": spread_inside}
    if typical_volumes is not None and len(typical_volumes):
        centre, scale = np.median(np.log(typical_volumes)), np.std(np.log(typical_volumes))
        signals["volume implausibility |log volume - median| / sd (training labels)"] = np.array(
            [abs(np.log(max(1, r["volume"])) - centre) / scale for r in nca])
    report: dict = {"results": len(nca), "failures": int(failure.sum()), "failure_dice": FAILURE_DICE, "signals": {}}
    lines = [f"{len(nca)} Med-NCA results (clean and corrupted), {int(failure.sum())} failures "
             f"(foreground Dice < {FAILURE_DICE}).", "",
             "| signal | ROC AUC for failure | mean on failures | mean on the rest |", "|---|---:|---:|---:|"]
    for name, values in signals.items():
        auc = roc_auc(values, failure)
        report["signals"][name] = {"auc": auc}
        on_fail = f"{values[failure].mean():.4f}" if failure.any() else "-"
        on_rest = f"{values[~failure].mean():.4f}" if (~failure).any() else "-"
        lines.append(f"| {name} | {auc:.3f} | {on_fail} | {on_rest} |")
    # Each warning rule at its shipped threshold and at the one re-chosen here, then the logic's rule.
    cases = [r["case"] for r in nca]
    shipped = {"NQM (largest of the classes)": (nqm_max, entry.get("qualityWarningThreshold")),
               "spread inside the structure": (spread_inside, entry.get("structureSpreadWarningThreshold"))}
    lines += ["", "| warning rule | threshold | sensitivity | specificity | results flagged | "
                  "sensitivity, leave one case out |", "|---|---:|---:|---:|---:|---:|"]
    for name, (values, threshold) in shipped.items():
        chosen = threshold_for_sensitivity(values, failure, TARGET_SENSITIVITY)
        held_out = leave_one_case_out(values, failure, cases, TARGET_SENSITIVITY) if len(set(cases)) > 1 else None
        for label, value in (("shipped", threshold), (f"re-chosen (>= {TARGET_SENSITIVITY:.0%})", chosen)):
            if value is None:
                lines.append(f"| {name}, {label} | none | - | - | - | - |")
                continue
            rates = flag_rates(values, failure, value)
            report.setdefault("thresholds", {})[f"{name}, {label}"] = {"threshold": value, **rates}
            loco = f"{held_out['sensitivity']:.3f}" if held_out and label != "shipped" else "-"
            lines.append(f"| {name}, {label} | {value:.4g} | {rates['sensitivity']:.3f} | "
                         f"{rates['specificity']:.3f} | {rates['flagged']} of {len(nca)} | {loco} |")
    # The logic's own rule (logic.failure_signals) on each result.
    from MedNCASegmentLib.logic import failure_signals

    warns_by = "spread inside the structure" if entry.get("structureSpreadWarningThreshold") is not None \
        else "NQM (largest of the classes)"
    plausible = {f"class {index + 1}": tuple(segment["plausibleVolumeMm3"])  # 1 mm voxels: mm3 = voxels
                 for index, segment in enumerate(entry.get("segments", [])) if segment.get("plausibleVolumeMm3")}
    combined = np.array([bool(failure_signals(
        {f"class {index + 1}": score for index, score in enumerate(r["nqm"])},
        {"structure": r["spread_inside"] if r["volume"] else None},
        # rows recorded before part volumes: no part judged
        {f"class {index + 1}": mm3 for index, mm3 in enumerate(r["part_volumes"])} if "part_volumes" in r else None,
        entry.get("qualityWarningThreshold"), entry.get("structureSpreadWarningThreshold"), plausible)) for r in nca])
    if failure.any() and (~failure).any():
        sensitivity, specificity = combined[failure].mean(), (~combined[~failure]).mean()
        report["shipped_rule"] = {"sensitivity": float(sensitivity), "specificity": float(specificity),
                                  "flagged": int(combined.sum())}
        report["shipped_rule"]["signal"] = warns_by
        lines.append(f"| the logic's warning ({warns_by} above its shipped threshold, or an empty part or an implausible volume) | - | "
                     f"{sensitivity:.3f} | "
                     f"{specificity:.3f} | {int(combined.sum())} of {len(nca)} | - |")
        missed = sorted(r["dice_foreground"] for r, f, c in zip(nca, failure, combined, strict=True) if f and not c)
        lines += ["", f"Failures the logic's warning misses: {len(missed)}"
                  + (f", foreground Dice {missed[0]:.3f} to {missed[-1]:.3f}." if missed else ".")]
    failing = sorted({f"{r['artefact']} {r['level']}" for r, f in zip(nca, failure, strict=True) if f})
    lines += ["", f"Failures came from: {', '.join(failing) or 'none'}."]
    return lines, report


def ossnet_signal_lines(rows: list[dict]) -> list[str]:
    """OSS-Net's candidate warning per result, and how it ranks with Dice (descriptive: one case)."""
    from scipy.stats import spearmanr

    lines = ["| condition | Dice | uncertain share (p in [0.25, 0.75] / called tumour) |", "|---|---:|---:|"]
    lines += [f"| {r['artefact']} {r['level']} | {r['dice_whole tumour']:.4f} | {r['uncertain_share']:.4f} |"
              for r in rows]
    dices = np.array([r["dice_whole tumour"] for r in rows])
    shares = np.array([r["uncertain_share"] for r in rows])
    failure = dices < FAILURE_DICE
    lines += ["", f"Spearman correlation of the uncertain share with Dice over these {len(rows)} results: "
              f"{spearmanr(shares, dices).statistic:.3f}; ROC AUC for Dice < {FAILURE_DICE}: "
              f"{roc_auc(shares, failure):.3f} ({int(failure.sum())} such results).", ""]
    return lines


def _complete_cases(rows: list[dict]) -> list[dict]:
    """The rows of the cases that have every (model, condition) of the rows (a stopped run's last
    case is incomplete)."""
    combos = {(r["model"], r["artefact"], r["level"]) for r in rows}
    cases = [c for c in dict.fromkeys(r["case"] for r in rows)
             if {(r["model"], r["artefact"], r["level"]) for r in rows if r["case"] == c} == combos]
    return [r for r in rows if r["case"] in cases]


def render_saved(paths: Sequence[Path]) -> list[str]:
    """The tables of saved runs (``--json``): hippocampus rows of complete cases, brain tumour rows."""
    hippocampus, brats = [], []
    for path in paths:
        saved = json.loads(Path(path).read_text())
        rows = saved.get("hippocampus", []) + saved.get("brats", []) + saved.get("partial", [])
        hippocampus += [r for r in rows if "dice_foreground" in r]
        brats += [r for r in rows if "dice_whole tumour" in r]
    # One row per (model, case, condition) where runs overlapped (the same seeds: the same result).
    hippocampus = list({(r["model"], r["case"], r["artefact"], r["level"]): r for r in hippocampus}.values())
    brats = list({(r["model"], r["case"], r["artefact"], r["level"]): r for r in brats}.values())
    lines = []
    if hippocampus:
        hippocampus = _complete_cases(hippocampus)
        cases = len({r["case"] for r in hippocampus})
        lines += [f"## Hippocampus: {cases} validation cases", ""]
        lines += robustness_table(hippocampus, list(HIPPOCAMPUS_REGIONS)) + [""]
        if any(r["model"] == "Med-NCA" for r in hippocampus):
            entry = next(m for m in json.loads(REGISTRY.read_text())["models"] if m["id"] == "mednca2d-hippocampus")
            quality_lines, _ = quality_analysis(hippocampus, entry,
                                                training_volumes(DATA / "Task04_Hippocampus", DEFAULT_SPLIT))
            lines += ["## Quality score as a failure detector (Med-NCA)", ""] + quality_lines + [""]
    if brats:
        lines += [f"## Brain tumour: OSS-Net on {', '.join(dict.fromkeys(r['case'] for r in brats))} (1 mm output)", ""]
        lines += robustness_table(brats, list(TUMOUR_REGIONS)) + [""]
        lines += ossnet_signal_lines(brats)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nca", type=Path, default=DEFAULT_NCA, help="Med-NCA weights (default: the shipped model)")
    parser.add_argument("--unet", type=Path, default=None, help="UNet baseline state_dict (unet_baseline.py); "
                        "without it Med-NCA runs alone")
    parser.add_argument("--ossnet", type=Path, default=DEFAULT_OSSNET)
    parser.add_argument("--models", default="Med-NCA,UNet,OSS-Net",
                        help="comma-separated subset of: Med-NCA, UNet (needs --unet), OSS-Net")
    parser.add_argument("--data", type=Path, default=DATA / "Task04_Hippocampus")
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    parser.add_argument("--brats", type=Path, default=DATA / "BraTS_sample")
    parser.add_argument("--brats-split", type=Path, default=DEFAULT_BRATS_SPLIT)
    parser.add_argument("--cases", type=int, default=None, help="only the first N validation cases (default: all 42)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N validation cases (with --cases: "
                        "the next N after them; to spread a run over processes)")
    parser.add_argument("--artefacts", default=",".join(ARTEFACTS),
                        help=f"comma-separated subset of: {', '.join(ARTEFACTS)}")
    parser.add_argument("--levels", default=",".join(LEVELS), help="comma-separated subset of: moderate, strong")
    parser.add_argument("--runs", type=int, default=10, help="Med-NCA stochastic runs (the shipped setting: 10)")
    parser.add_argument("--seed", type=int, default=0, help="Med-NCA's seed (the artefacts have their own fixed seeds)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write every row and figure here")
    parser.add_argument("--report", type=Path, nargs="+", default=None,
                        help="print the tables of earlier runs' --json files (finished or stopped) instead of running; "
                             "the hippocampus rows of only the cases every condition has")
    args = parser.parse_args(argv)
    if args.report:
        print("\n".join(render_saved(args.report)))
        return 0
    artefacts = [a.strip() for a in args.artefacts.split(",") if a.strip()]
    levels = [level.strip() for level in args.levels.split(",") if level.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.unet and "UNet" in models:
        models.remove("UNet")
    unknown = [a for a in artefacts if a not in ARTEFACTS] + [level for level in levels if level not in LEVELS] + \
        [m for m in models if m not in ("Med-NCA", "UNet", "OSS-Net")]
    if unknown:
        parser.error(f"unknown artefacts or levels: {unknown}")
    for path in (args.nca, *([args.unet] if args.unet else [])):
        if not path.exists():
            parser.error(f"{path} does not exist")

    import torch

    torch.set_num_threads(args.threads)
    _torchio()
    conditions = [("clean", "")] + [(a, level) for a in artefacts for level in levels]

    report: dict = {"artefacts": {a: ARTEFACTS[a] for a in artefacts}, "levels": levels, "runs": args.runs,
                    "threads": args.threads, "partial": []}

    def log(message: str, row: dict) -> None:
        print(message, file=sys.stderr, flush=True)
        if args.json:  # every row as it comes, so that a stopped run keeps what it measured
            report["partial"].append(row)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1, default=float))

    lines = []
    runners = {}
    if "Med-NCA" in models:
        runners["Med-NCA"] = nca_runner(args.nca, args.runs, args.seed)
    if "UNet" in models:
        runners["UNet"] = unet_runner(args.unet)
    if runners:
        inputs = hippocampus_inputs(args.data, args.split, args.cases, args.skip)
        rows = evaluate(runners, inputs, conditions, HIPPOCAMPUS_REGIONS, log)
        report["hippocampus"] = rows
        lines += [f"## Hippocampus: {len(inputs)} validation cases ({', '.join(runners)}; Med-NCA runs={args.runs}, "
                  "UNet + largest component)", ""]
        lines += robustness_table(rows, list(HIPPOCAMPUS_REGIONS)) + [""]
        if any(a in GEOMETRIC_ARTEFACTS for a in artefacts):
            lines += ["What the artefact does to the anatomy: Dice of the expert labels carried through it "
                      "(as an image, thresholded at one half) against themselves", ""]
            lines += carried_labels_table(inputs, artefacts, levels, HIPPOCAMPUS_REGIONS) + [""]
    if "Med-NCA" in runners:
        entry = next(m for m in json.loads(REGISTRY.read_text())["models"] if m["id"] == "mednca2d-hippocampus")
        quality_lines, report["quality"] = quality_analysis(rows, entry, training_volumes(args.data, args.split))
        lines += ["## Quality score as a failure detector (Med-NCA)", ""] + quality_lines + [""]
    if "OSS-Net" in models:
        inputs = brats_inputs(args.brats, args.brats_split)
        rows = evaluate({"OSS-Net": ossnet_runner(args.ossnet)}, inputs, conditions, TUMOUR_REGIONS, log)
        report["brats"] = rows
        lines += [f"## Brain tumour: OSS-Net on {', '.join(i.case_id for i in inputs)} (1 mm output)", ""]
        lines += robustness_table(rows, list(TUMOUR_REGIONS)) + [""]
        lines += ossnet_signal_lines(rows)
    from EfficientSegmentationCommon.hardware import hardware_description

    lines.append(f"Hardware: {hardware_description()}, {args.threads} thread(s).")
    print("\n".join(lines))
    if args.json:
        report.pop("partial")
        args.json.write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
