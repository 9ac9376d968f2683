"""Is this input what the model card asks for? Content checks shared by both modules' logics.

The file-level checks (readable, 3D, one component, finite: ``volume_arrays``) say whether a
volume can be read; these say whether its *content* fits the model, so that a wrong input gets
a message instead of a confident wrong result "ok" (issues 11.7-11.9, 16.3):

- ``check_image_content``: refuses a constant volume and a label map or mask given as an image
  (few distinct integer values), for every model.
- ``brain_requirement_warnings``: the requirements a card states for brain MRI
  (``"skull-stripped"``, ``"whole-brain"``): a constant background, no scalp or skull left,
  a brain-sized foreground, the whole brain in view.
- ``modality_order_problems``: FLAIR and contrast T1 in the order the card lists them, judged
  from the volumes' names and from two contrasts that differ between the two sequences.
- ``brain_overlap`` and its warning: two skull-stripped sequences of one patient, registered to
  each other, cover the same brain; one from another patient or unregistered does not.
- ``coarse_spacing_warning``: voxels coarser than the model was measured good at (thick slices).
- ``empty_result_warning``: a result with no voxel in any segment is said so, not reported "ok".

Refusals raise ``InputVolumeError`` (the logic's ``prepare`` calls these before touching the
scene, so the scene stays as it was); warnings are sentences for ``result.warnings``, which the
panel and both commands show. Every message names the input and says what to do. Arrays are
numpy in Slicer's KJI order; statistics are taken on a strided copy of at most about
``MAX_STATISTICS_VOXELS`` voxels, so a check costs well under a second on a 240x240x155 scan.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputVolumeError
from .geometry import VolumeGeometry
from .resampling import resample

# A volume with at most this many distinct values, all integers, is a label map or a mask. Real
# scans have far more: the fewest among the 208 MSD hippocampus crops (8-bit, 1 mm) is 109.
LABEL_MAP_MAX_VALUES = 16
# A volume of integers with more labels (a parcellation) is told from an 8-bit scan by its uniform
# regions: the share of neighbouring voxel pairs (outside the background) with equal values.
# Scans: at most 0.11 (208 MSD crops, 10 BraTS images, the MNI152 T1 template, 8-bit); label
# maps and masks: at least 0.72 (208 MSD label maps, 5 BraTS label maps and brain masks).
LABEL_MAP_UNIFORM_SHARE = 0.5
LABEL_MAP_MAX_LABELS = 4096
# Below this many voxels a scan may hold few values too (a 2 x 2 x 2 crop): no label-map verdict.
LABEL_MAP_MIN_VOXELS = 1000
# Statistics are taken on every n-th voxel along each axis, n chosen to keep about this many.
MAX_STATISTICS_VOXELS = 2_000_000
# Background of a scan without one constant background value (``foreground_mask``): voxels at or
# below this percentile of the intensities.
BACKGROUND_PERCENTILE = 0.1
# A skull-stripped scan: at least this share of the voxels hold the one background value
# (BraTS: 81-88 %; a scan with its noisy air background: about 0.1 %, the percentile itself).
MIN_BACKGROUND_SHARE = 0.05
# Foreground volume (mL) of a whole, skull-stripped adult brain: BraTS cases (with tumour)
# 1084-1690 mL, the MNI152 2009a template's brain (enlarged by the normalisation) 1887 mL.
BRAIN_VOLUME_ML = (500.0, 2200.0)
# The outer layer of a skull-stripped brain is cortex and CSF, darker than the brain's median
# (BraTS: -1.2 to -2.8 robust SDs); scalp fat is brighter. Above this (robust SDs): scalp left.
MAX_RIM_CONTRAST = 0.5
RIM_MM = 3.0
# A whole brain in view does not reach the volume's faces (BraTS: 0 %); cropped exactly to its
# bounding box (as preprocessing often does) its tips touch them, on up to 6.9 % of a face (10
# BraTS images; 2 % warned 3 of them). Cut off by 10 mm it fills 12-27 %, by 5 mm 6-15 %
# (40 of 60 cuts above this), by 3 mm 2-13 % (10 of 60). Above this share it is cut off there.
MAX_FACE_SHARE = 0.08
# Percentiles (%) of the brain's intensities whose distance, in robust SDs, is its tail width.
TAIL_PERCENTILES = (5.0, 95.0)

# Two skull-stripped sequences of one patient overlap (Dice of their non-background voxels)
# 0.998-0.999 on one grid in the five BraTS cases, 0.98 or more with the T1c stored at 1.5, 2 or
# 3 mm, in 5 mm slices, in 5 or 7 mm slabs (each slice the mean of those it covers; 0.958-0.967
# before ``brain_overlap`` counted a coarse voxel the finer mask fills in part; a 7 mm axial FLAIR
# against a 7 mm coronal T1c, 0.986) or cropped to its brain; with the T1c 2 mm off (R, A or S) 0.966-0.978,
# 3 mm off 0.950-0.968. A FLAIR of one case with the contrast T1 of another, although all five
# lie in one atlas space, 0.71-0.94. Below this they are not one brain. A T1c resampled to 1 mm
# after skull-stripping at 2 mm has a blurred edge (0.95-0.96) and is warned of too: the message
# names that cause (Testing/Benchmarks/brain_overlap.py measures all of these).
MIN_BRAIN_OVERLAP = 0.97

# Requirements a model card may state in ``inputRequirements``.
SKULL_STRIPPED = "skull-stripped"
WHOLE_BRAIN = "whole-brain"
REQUIREMENTS = (SKULL_STRIPPED, WHOLE_BRAIN)


def describe_input(input_name: str | None, volume_name: str) -> str:
    """How messages name an input: "The FLAIR volume 'x'" or "Input volume 'x'"."""
    return f"The {input_name} volume '{volume_name}'" if input_name else f"Input volume '{volume_name}'"


def _strided(image: np.ndarray, spacing_kji: Sequence[float]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Every n-th voxel along each axis (n so that at most ~MAX_STATISTICS_VOXELS remain), and
    the spacing (mm, KJI) of that coarser grid."""
    step = max(1, math.ceil((image.size / MAX_STATISTICS_VOXELS) ** (1 / 3)))
    return image[::step, ::step, ::step], tuple(float(s) * step for s in spacing_kji)


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """The voxels of ``image`` (any shape) that are not background: a boolean array of its shape.

    The background of a skull-stripped scan is one value: the most frequent one when it fills at
    least ``MIN_BACKGROUND_SHARE`` of the volume and is not above the median. That is the minimum
    in BraTS, but 0 in a brain z-scored with its background left at 0, where half the brain is
    below it (a fresh-user trial: taking the lowest value there read 88% background as 0.1%,
    warned that the scan was not skull-stripped and lost 0.2 Dice). Without such a value (a head
    with its noisy air), the background is the voxels at or below ``BACKGROUND_PERCENTILE``.
    """
    value, constant = _background(image)
    return image != value if constant else image > value


def background_value(image: np.ndarray) -> float:
    """The intensity of ``image``'s background (``foreground_mask``): what a resampled copy must
    hold where the image does not reach. Filling with 0 there would add brain-like voxels to a
    z-scored scan, whose background is its minimum (BraTS: about -5.6)."""
    return float(_background(image)[0])


def _background(image: np.ndarray) -> tuple[float, bool]:
    """``image``'s background intensity, and whether the background is that one constant value
    (True) or every voxel at or below it (False); see ``foreground_mask``."""
    flat = image.reshape(-1)
    sample = flat[:: max(1, flat.size // 100_000)]
    values, counts = np.unique(sample, return_counts=True)
    mode = values[np.argmax(counts)]
    if counts.max() >= MIN_BACKGROUND_SHARE * sample.size and mode <= np.median(sample):
        if np.count_nonzero(image == mode) >= MIN_BACKGROUND_SHARE * image.size:
            return float(mode), True
    index = int(BACKGROUND_PERCENTILE / 100 * (flat.size - 1))
    return float(np.partition(flat, index)[index]), False


def label_values(image: np.ndarray) -> np.ndarray | None:
    """The distinct values of ``image`` if it looks like a label map or mask, else None: at
    least ``LABEL_MAP_MIN_VOXELS`` voxels, all integers, and either at most ``LABEL_MAP_MAX_VALUES`` of them or (up to
    ``LABEL_MAP_MAX_LABELS``) in uniform regions (``uniform_share`` at least
    ``LABEL_MAP_UNIFORM_SHARE``). A strided sample is looked at first, so a real image is
    recognised without sorting all its voxels."""
    if image.size < LABEL_MAP_MIN_VOXELS:
        return None
    sample = image.reshape(-1)[:: max(1, image.size // 100_000)]
    if not np.all(sample == np.round(sample)) or len(np.unique(sample)) > LABEL_MAP_MAX_LABELS:
        return None
    values = np.unique(image)
    if len(values) > LABEL_MAP_MAX_LABELS or not np.all(values == np.round(values)):
        return None
    if len(values) <= LABEL_MAP_MAX_VALUES or uniform_share(image) >= LABEL_MAP_UNIFORM_SHARE:
        return values
    return None


def uniform_share(image: np.ndarray) -> float:
    """Share of neighbouring voxel pairs (along each axis, not both background = the minimum)
    whose values are equal: high in label maps, low in images, where noise varies every voxel."""
    background = image.min()
    equal = total = 0
    for axis in range(image.ndim):
        if image.shape[axis] < 2:
            continue
        moved = np.moveaxis(image, axis, 0)
        a, b = moved[1:], moved[:-1]
        counted = (a != background) | (b != background)
        total += int(counted.sum())
        equal += int(((a == b) & counted).sum())
    return equal / total if total else 1.0


def check_image_content(image: np.ndarray, description: str, expected: str = "the scan") -> None:
    """Raise ``InputVolumeError`` if ``image`` (any shape) is constant or a label map/mask.

    ``description`` names the input ("The FLAIR volume 'x'"); ``expected`` says what it should
    be (e.g. "a FLAIR MRI"). Both leave nothing to segment, and a label map given as an image
    used to give a wrong segmentation reported as fine (issue 11.8).
    """
    low, high = float(np.min(image)), float(np.max(image))
    if low == high:
        raise InputVolumeError(f"{description} is constant (every voxel is {low:g}): there is nothing to "
                               f"segment. Check that the right file was loaded; it should be {expected}.")
    values = label_values(image)
    if values is not None:
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        kind = "a mask" if len(values) == 2 else "a label map"
        held = (f"only {len(values)} distinct integer values ({shown})" if len(values) <= LABEL_MAP_MAX_VALUES else
                f"{len(values)} integer values ({shown}) in uniform regions, as label maps do")
        raise InputVolumeError(f"{description} looks like {kind}, not an image: it holds {held}. Select {expected} "
                               "itself; label maps and masks are results, not inputs.")


@dataclass(frozen=True)
class BrainFeatures:
    """What the brain checks measure on one image (see the module's constants for the ranges)."""

    background_share: float  # share of voxels holding the background value
    foreground_ml: float  # volume of the voxels brighter than the background (mL)
    rim_contrast: float  # median of the outer RIM_MM of the foreground minus its median, robust SDs
    face_share: float  # largest share of foreground voxels on any of the volume's six faces
    tail_width: float  # distance of the foreground's TAIL_PERCENTILES in robust SDs (1.4826 MAD)


def brain_features(image: np.ndarray, geometry: VolumeGeometry) -> BrainFeatures:
    """Measure ``image`` (KJI, on ``geometry``) as a brain MRI; see ``BrainFeatures``."""
    from scipy.ndimage import distance_transform_edt

    spacing_kji = tuple(float(s) for s in reversed(tuple(geometry.spacing)))
    sample, spacing = _strided(np.asarray(image, dtype=np.float32), spacing_kji)
    foreground = foreground_mask(sample)
    count = int(foreground.sum())
    voxel_ml = float(np.prod(spacing)) / 1000.0
    faces = [foreground.take(index, axis=axis) for axis in range(3) for index in (0, -1)]
    face_share = max(float(face.mean()) for face in faces)
    if count < 100:
        return BrainFeatures(1.0 - count / sample.size, count * voxel_ml, 0.0, face_share, 0.0)
    values = sample[foreground]
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median))) or float(values.std()) or 1.0
    rim = sample[foreground & (distance_transform_edt(foreground, sampling=spacing) <= RIM_MM)]
    low, high = np.percentile(values, TAIL_PERCENTILES)
    return BrainFeatures(
        background_share=1.0 - count / sample.size,
        foreground_ml=count * voxel_ml,
        rim_contrast=(float(np.median(rim)) - median) / spread,
        face_share=face_share,
        tail_width=float(high - low) / spread,
    )


def brain_requirement_warnings(features: BrainFeatures, description: str, requirements: Sequence[str]) -> list[str]:
    """Sentences naming each of the card's ``requirements`` (``REQUIREMENTS``) that an image
    with ``features`` fails, and what to do. Empty when it meets them all."""
    warnings = []
    strip = ("Strip the skull first (e.g. with SynthStrip, HD-BET or Slicer's Swiss Skull Stripper), "
             "as the model card requires.")
    if SKULL_STRIPPED in requirements:
        if features.background_share < MIN_BACKGROUND_SHARE:
            warnings.append(f"{description} has no constant background (only {features.background_share:.1%} of its "
                            "voxels share one value): it does not look skull-stripped, and the model would "
                            f"read the whole head as brain. {strip}")
            return warnings  # without a background the other measures mean nothing
        if features.rim_contrast > MAX_RIM_CONTRAST:
            warnings.append(f"{description} has a bright outer layer ({features.rim_contrast:+.1f} SD against the "
                            "brain's median; the surface of a skull-stripped brain is darker): scalp or skull seem "
                            f"to remain. {strip}")
        if features.foreground_ml > BRAIN_VOLUME_ML[1]:
            warnings.append(f"{description} holds {features.foreground_ml / 1000:.1f} L of tissue, more than a brain "
                            f"(up to about {BRAIN_VOLUME_ML[1] / 1000:.1f} L): it does not look skull-stripped. {strip}")
    if WHOLE_BRAIN in requirements:
        if features.face_share > MAX_FACE_SHARE:
            warnings.append(f"{description} reaches the edge of the volume ({features.face_share:.0%} of one face is "
                            "tissue): the brain seems cut off, but the model needs the whole brain in view. Use a "
                            "scan that covers the whole brain (use an ROI to segment only part of it).")
        elif features.foreground_ml < BRAIN_VOLUME_ML[0]:
            warnings.append(f"{description} holds only {features.foreground_ml:.0f} mL of tissue, less than a whole "
                            f"brain (at least about {BRAIN_VOLUME_ML[0]:.0f} mL): the model needs the whole brain in "
                            "view. Use a scan that covers the whole brain (use an ROI to segment only part of it).")
    return warnings


def looks_skull_stripped(features: BrainFeatures) -> bool:
    """Whether an image with ``features`` meets the ``SKULL_STRIPPED`` requirement: the checks
    measured on skull-stripped brains (contrast, brain overlap) mean nothing in a head."""
    return not brain_requirement_warnings(features, "", (SKULL_STRIPPED,))


def modality_order_problems(features: Sequence[BrainFeatures], input_names: Sequence[str],
                            volume_names: Sequence[str], named_as: Callable[[str, str], bool]) -> tuple[list[str], str | None]:
    """Check that a FLAIR and a contrast T1 were given in the card's order: (warnings, error).

    ``features`` are the inputs' ``brain_features``, in the order given for ``input_names``
    (e.g. ``["FLAIR", "T1c"]``); ``named_as(volume_name, input_name)`` says whether a volume's
    name marks it as that input. Two kinds of evidence:

    - names: each volume is named as the other input;
    - contrast: a FLAIR's brain intensities have a narrow body (grey and white matter nearly
      alike) and long tails (CSF nulled, lesions bright), a T1's a broad body (white matter
      brighter than grey) and short tails; so the FLAIR's tail width (5th to 95th percentile in
      robust SDs) is the larger. BraTS, all five cases: FLAIR 5.9-8.7, T1c 4.0-4.8, the FLAIR's
      larger by 1.7 to 4.0 in each case, so all ten orders (each case both ways round) are
      judged right.

    The contrast is judged only when both inputs look skull-stripped (``brain_requirement_warnings``
    for ``SKULL_STRIPPED`` find nothing): in a head, scalp, skull and air set the tails, and the
    five BraTS pairs given back a synthetic head (the tests' ``with_skull``, with and without
    noisy air) read reversed in 6 of 10; such an input is already warned of as not skull-stripped.

    An error (refuse) when both kinds say swapped; a warning when one does, also when the names
    confirm the order and only the contrast disagrees (files labelled wrongly: the model then
    returns an empty or wrong result). The contrast held under the robustness benchmark's
    artefacts: the FLAIR's tails were the longer in all five BraTS cases under every artefact
    at the moderate level and in 39 of 40 strong ones (not under pat0003's strong bias field).
    Models whose inputs are not a FLAIR and a T1 are not checked.
    """
    names = [name.lower() for name in input_names]
    if "flair" not in names or not any(name.startswith("t1") for name in names) or len(features) != len(names):
        return [], None
    flair = names.index("flair")
    t1 = next(index for index, name in enumerate(names) if name.startswith("t1"))
    f, t = features[flair], features[t1]
    stripped = looks_skull_stripped(f) and looks_skull_stripped(t)
    contrast_swapped = stripped and f.tail_width < t.tail_width
    names_right = named_as(volume_names[flair], input_names[flair]) and named_as(volume_names[t1], input_names[t1])
    names_swapped = (named_as(volume_names[flair], input_names[t1]) and named_as(volume_names[t1], input_names[flair])
                     and not names_right)
    given = f"'{volume_names[flair]}' as {input_names[flair]} and '{volume_names[t1]}' as {input_names[t1]}"
    order = ", ".join(input_names)
    if names_swapped and contrast_swapped:
        return [], (f"The inputs seem swapped: {given} were given, but their names and their contrast say the "
                    f"reverse. Give them in the order the model card lists: {order}.")
    if names_swapped:
        contrast = ("their contrast agrees with the order given, so the files may only be misnamed"
                    if stripped else "their contrast cannot be judged in scans that are not skull-stripped")
        return [f"The inputs may be swapped: {given} were given, but their names say the reverse; {contrast}. "
                f"Check the result (and the file names). The model needs them in the order {order}."], None
    if contrast_swapped:
        names_agree = " and their names agree" if names_right else ""
        mislabelled = (" If the files are labelled wrongly, give them the other way round; if not, check the result."
                       if names_right else "")
        return [f"The inputs may be swapped: {given} were given{names_agree}, but their contrast looks like the "
                f"reverse (the {input_names[t1]}'s intensities have the longer tails, as a FLAIR's have). "
                f"The model needs them in the order {order}.{mislabelled}"], None
    return [], None


def check_distinct_inputs(images: Sequence[np.ndarray], input_names: Sequence[str], volume_names: Sequence[str]) -> None:
    """Raise ``InputVolumeError`` when two inputs of a model hold the same image (one file
    picked twice): the model needs a different sequence for each."""
    for a in range(len(images)):
        for b in range(a + 1, len(images)):
            if images[a].shape == images[b].shape and np.array_equal(images[a], images[b]):
                raise InputVolumeError(
                    f"The {input_names[a]} volume '{volume_names[a]}' and the {input_names[b]} volume "
                    f"'{volume_names[b]}' hold the same image; select a different scan for each input.")


def brain_overlap(reference: np.ndarray, reference_geometry: VolumeGeometry, image: np.ndarray,
                  geometry: VolumeGeometry) -> float:
    """Dice (0-1) of the brains (``foreground_mask``) of two skull-stripped scans, KJI arrays each
    on its own grid.

    Each mask is taken on its own grid and the two are compared on the coarser one, where both
    grids reach: a registration cannot be judged finer than the coarser voxel, an image resampled
    before its mask is taken has a blurred edge and, beyond its grid, no background (a fresh-user
    trial: a T1c stored at 2 mm, of the same brain, read Dice 0.84 that way), and a scan that
    covers part of the brain is another problem (the logic says how much it covers). Each mask
    is carried onto the coarser grid, made coarse along every axis along which either grid is
    (two scans thick along different axes), as the share of each of its voxels it fills, and
    counted in when that share is a half or more, or when it is any: a scan whose thick slices
    each average the brain they cover has a mask of every slice that touches the brain (fresh-user
    trials: 7 mm slices of one patient read Dice 0.96 by the half rule, and 7 mm axial against
    7 mm coronal slices too); the best agreement is taken.
    """
    first, second = foreground_mask(np.asarray(reference)), foreground_mask(np.asarray(image))
    if geometry.matches(reference_geometry, atol=1e-4):
        return _dice(first, second)
    coarser = geometry if np.prod(geometry.spacing) > np.prod(reference_geometry.spacing) else reference_geometry
    # Thick along different axes (a 7 mm axial FLAIR, a 7 mm coronal T1c): on a grid coarse along both.
    common = coarser.with_spacing(np.maximum(_voxel_extent(geometry, coarser), _voxel_extent(reference_geometry, coarser)))
    first_share, second_share = (resample(_box_mean(mask, grid, common), grid, common, order=0)
                                 for mask, grid in ((first, reference_geometry), (second, geometry)))
    both_reach = np.ones(common.shape_kji, dtype=bool)
    for grid in (reference_geometry, geometry):
        both_reach &= resample(np.ones(grid.shape_kji, np.float32), grid, common) >= 0.5
    return max(_dice((first_share >= low_first) & both_reach, (second_share >= low_second) & both_reach)
               for low_first in (0.5, 0.01) for low_second in (0.5, 0.01))


def _voxel_extent(geometry: VolumeGeometry, axes_of: VolumeGeometry) -> np.ndarray:
    """The extent (mm) of a voxel of ``geometry`` along each axis of ``axes_of`` (I, J, K)."""
    return np.abs(axes_of.direction.T @ geometry.direction) @ np.asarray(geometry.spacing)


def _box_mean(mask: np.ndarray, geometry: VolumeGeometry, coarser: VolumeGeometry) -> np.ndarray:
    """``mask`` (KJI on ``geometry``) averaged over boxes the size of a voxel of ``coarser``: the
    share of such a voxel, centred on each voxel of ``geometry``, that the mask fills."""
    from scipy.ndimage import uniform_filter

    # The coarse voxel's extent along each axis of ``geometry``, in voxels of that axis.
    extent = _voxel_extent(coarser, geometry)
    sizes_ijk = np.maximum(1, np.round(extent / np.asarray(geometry.spacing))).astype(int)
    return uniform_filter(mask.astype(np.float32), size=tuple(sizes_ijk[::-1]), mode="constant")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def brain_overlap_warning(images: Sequence[np.ndarray], geometries: Sequence[VolumeGeometry],
                          input_names: Sequence[str], volume_names: Sequence[str]) -> str | None:
    """A warning when skull-stripped inputs (KJI arrays, each on its own ``geometries`` entry) do
    not cover the same brain as the first input, else None.

    Two sequences of one patient, registered to each other and skull-stripped, cover the same
    voxels, so a ``brain_overlap`` below ``MIN_BRAIN_OVERLAP`` means another patient's scan or a
    scan not registered to the first, and the model would combine two different brains voxel by
    voxel. Separately skull-stripped sequences have not been measured here; their masks may
    differ at the brain's surface, so this warns, never refuses.
    """
    for image, geometry, input_name, volume_name in zip(images[1:], geometries[1:], input_names[1:],
                                                        volume_names[1:], strict=True):
        overlap = brain_overlap(images[0], geometries[0], image, geometry)
        if overlap < MIN_BRAIN_OVERLAP:
            return (f"The {input_names[0]} volume '{volume_names[0]}' and the {input_name} volume '{volume_name}' do "
                    f"not show the same brain: their skull-stripped brains overlap by Dice {overlap:.3f} (two "
                    f"sequences of one patient, registered and skull-stripped, overlap by more than "
                    f"{MIN_BRAIN_OVERLAP}). They may come from different patients, not be registered to each "
                    "other, or have been skull-stripped apart or resampled after skull-stripping: select the "
                    "same patient's scans, register them (e.g. with Slicer's General Registration (BRAINS)) and "
                    "skull-strip them together, with one brain mask.")
    return None


def voxel_size_text(geometry: VolumeGeometry) -> str:
    """The voxel size (mm, I x J x K) as messages give it: 4 significant digits, so that 3.004 mm
    is not shown as 3 beside a 3 mm limit."""
    return " x ".join(f"{s:.4g}" for s in geometry.spacing)


def coarse_spacing_warning(geometry: VolumeGeometry, max_spacing_mm: float | None, description: str) -> str | None:
    """A warning when the voxels of ``geometry`` are coarser than ``max_spacing_mm`` (mm) along
    any axis (a model's ``maxSpacingMm``: the coarsest spacing at which its results were measured
    good), else None. A thick-slice scan is resampled onto the model's grid, but what lies between
    its slices was never imaged: the result there is interpolated and its volumes less exact
    (Med-NCA on 3-5 mm slices: ``Testing/Benchmarks/thick_slice_scans.py``). ``description``
    names the input ("Input volume 'x'")."""
    if max_spacing_mm is None or max(geometry.spacing) <= max_spacing_mm * (1 + 1e-3):
        return None
    return (f"{description} has voxels of {voxel_size_text(geometry)} mm, coarser than the {max_spacing_mm:g} mm this model was "
            "checked at, so the segmentation may be wrong between the slices and its volumes less exact. Use a "
            f"scan with voxels of at most {max_spacing_mm:g} mm along every axis if there is one, or check the "
            "result slice by slice.")


def empty_result_warning(labels: np.ndarray, segment_names: Sequence[str], volume_names: Sequence[str]) -> str | None:
    """A warning when ``labels`` (any shape) mark no voxel at all, else None: an empty result is
    either right (nothing to find) or a sign of a wrong input, and the user must be told.
    ``volume_names`` are the input volumes the segmentation was made from."""
    if np.any(labels):
        return None
    quoted = " and ".join(f"'{name}'" for name in volume_names)
    return (f"The segmentation of {quoted} is empty: no {' or '.join(segment_names)} was found. If the scan "
            "shows one, check the input against the model card (the right sequence in the right order, "
            "its requirements, not a label map).")


def check_inputs(images: Sequence[np.ndarray], geometries: Sequence[VolumeGeometry], volume_names: Sequence[str],
                 input_names: Sequence[str], requirements: Sequence[str] = (),
                 named_as: Callable[[str, str], bool] | None = None,
                 max_spacing_mm: float | Mapping[str, float] | None = None) -> list[str]:
    """Every content check for one run of a model; returns the warnings, raises
    ``InputVolumeError`` on an input that cannot give a meaningful result.

    ``images`` (KJI arrays on ``geometries``, as read from the volumes ``volume_names``) are the
    model's inputs in the order of its card's ``input_names``; ``requirements`` are the card's
    ``inputRequirements``; ``named_as(volume_name, input_name)`` tells whether a name marks a
    volume as an input (None: names are not judged). Refused: a constant volume, a label map or
    mask, one image for two inputs, FLAIR and T1 swapped by both names and contrast. Warned:
    each failed requirement, a swap that only one kind of evidence shows, and skull-stripped
    inputs that do not show the same brain (``brain_overlap_warning``; judged only when every
    input looks skull-stripped, as a head's mask is not its brain), and voxels coarser than the
    card's ``max_spacing_mm`` (``coarse_spacing_warning``; one value for every input, or per input
    name).
    """
    names = list(input_names) if len(input_names) == len(images) else [None] * len(images)
    for image, input_name, volume_name in zip(images, names, volume_names, strict=True):
        expected = f"a {input_name} scan" if input_name else "the scan"
        check_image_content(image, describe_input(input_name if len(images) > 1 else None, volume_name), expected)
    if len(images) > 1:
        check_distinct_inputs(images, [name or "input" for name in names], volume_names)
    limits = ([max_spacing_mm.get(name) for name in names] if isinstance(max_spacing_mm, Mapping)
              else [max_spacing_mm] * len(names))
    warnings = [warning for geometry, limit, input_name, volume_name in zip(geometries, limits, names, volume_names,
                                                                            strict=True)
                if (warning := coarse_spacing_warning(geometry, limit,
                                                      describe_input(input_name if len(images) > 1 else None,
                                                                     volume_name)))]
    ordered = [name.lower() for name in names if name]
    wants_order = "flair" in ordered and any(name.startswith("t1") for name in ordered)
    if not requirements and not wants_order:
        return warnings
    features = [brain_features(image, geometry) for image, geometry in zip(images, geometries, strict=True)]
    for measured, input_name, volume_name in zip(features, names, volume_names, strict=True):
        warnings += brain_requirement_warnings(measured, describe_input(input_name, volume_name), requirements)
    if SKULL_STRIPPED in requirements and len(images) > 1 and all(map(looks_skull_stripped, features)):
        overlap = brain_overlap_warning(images, geometries, [name or "input" for name in names], volume_names)
        warnings += [overlap] if overlap else []
    if wants_order:
        order_warnings, error = modality_order_problems(features, names, volume_names,
                                                        named_as or (lambda volume, name: False))
        if error:
            raise InputVolumeError(error)
        warnings += order_warnings
    return warnings
