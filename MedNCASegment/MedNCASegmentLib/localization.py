"""Where the hippocampi are in a whole-head T1 MRI: a box per side, found by affine registration.

The hippocampus model was trained on boxes cropped around one hippocampus (MSD Task04). On a
whole-head scan the boxes are found by registering the input affinely (SimpleITK: multi-resolution
Mattes mutual information, a moments initialisation, a similarity then an affine stage) to the
MNI152 2009a symmetric T1 template that the ``nilearn`` wheel ships (skull-stripped, 1 mm), and
mapping a box around each hippocampus in template space back into the input. Mutual information
makes this work across contrasts (T1, contrast T1) and with or without skull; the registration
runs on ~4 mm copies of both images, so it takes about a second and little memory whatever the
input's size.

All positions are RAS millimetres (Slicer's convention); arrays are in Slicer's KJI order.
"""

from __future__ import annotations

import functools
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from EfficientSegmentationCommon.errors import InputVolumeError
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.grids import axis_aligned_grid, is_axial
from EfficientSegmentationCommon.resampling import resample, same_voxel_centres

# Centroids of the left and right hippocampus in MNI152 space (RAS mm; x < 0 is left), and the
# extent of a box around one hippocampus (R, A, S mm), as given in issue 10 from the MNI-space
# literature. The box holds the hippocampal head and tail ROIs of the Seitzman et al. 2018 atlas
# that nilearn ships (checked in the tests).
MNI_CENTRES_RAS = {"left": (-26.0, -21.0, -10.0), "right": (28.0, -20.0, -10.0)}
MNI_BOX_SIZE_MM = (30.0, 40.0, 40.0)
# Added on each side of the template box before it is mapped into the input, to cover the error
# of an affine registration and the anatomy it cannot follow (mm).
DEFAULT_MARGIN_MM = 5.0
# Spacing (mm) at which the registration compares the images.
REGISTRATION_SPACING_MM = 4.0
# An input whose field of view is under this along all its RAS extents is a crop like the MSD
# ones (at most 59 mm), not a head (mm).
CROP_MODE_MAX_EXTENT_MM = 80.0
# Template-to-input scale factors beyond these are no head registration: children's heads are
# about 0.85 of the adult template, large adults about 1.15.
SCALE_RANGE = (0.65, 1.5)
# Registrations whose normalised mutual information (1: independent, 2: identical; 8 bins, over the
# template's brain widened by 8 mm, at 4 mm) stays under this are refused. Measured on the data
# of Testing/Python/test_localization.py: the template moved by rigid transforms and re-encoded
# reaches 1.4-2.0, the five BraTS contrast-T1 brains 1.12-1.26 (1.03-1.05 when the found transform
# is shifted by 20 mm; the template itself shifted by 20 mm: 1.046), a scrambled template about
# 1.0. So it refuses non-heads and gross failures, not errors of a few millimetres.
MIN_NORMALISED_MI = 1.06
NMI_BINS = 8
# Share of each side's box (before the margin) that has to lie inside the input's field of view.
MIN_BOX_INSIDE = 0.8

TEMPLATE_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
NILEARN_PIN = "nilearn==0.14.1"
SIDES = ("left", "right")

# RAS <-> LPS (ITK's physical space) for points and direction matrices.
_FLIP = np.diag([-1.0, -1.0, 1.0])


class LocalizationError(InputVolumeError):
    """No hippocampus could be located in the input: not a head, too small a field of view,
    or a registration that failed. The message says which, and suggests a manual ROI."""


@dataclass(frozen=True, eq=False)
class HippocampusBox:
    """One side's box in the input's RAS space: an oriented box that follows the head.

    ``axes`` (3x3) has the box's unit axes as columns, in RAS: the rotation of the registration,
    so on a head tilted in the scanner the box tilts with it and stays as tight as in the
    template (an axis-aligned box around a box rotated by 30 degrees is up to twice as large
    and reaches the other hippocampus). ``size`` is the extent along those axes (mm);
    ``centre_ras`` its centre (mm).
    """

    side: str
    centre_ras: np.ndarray
    axes: np.ndarray
    size: np.ndarray

    @property
    def corners_ras(self) -> np.ndarray:
        """The eight corners (8, 3), RAS mm."""
        signs = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
        return self.centre_ras + (signs * self.size) @ self.axes.T

    def contains(self, points_ras: np.ndarray) -> np.ndarray:
        """Whether each of ``points_ras`` (..., 3) lies inside the box (shape (...,))."""
        local = (np.asarray(points_ras, dtype=np.float64) - self.centre_ras) @ self.axes
        return np.all(np.abs(local) <= self.size / 2 + 1e-9, axis=-1)

    @classmethod
    def around(cls, side: str, corners_ras: np.ndarray, axes: np.ndarray) -> HippocampusBox:
        """The smallest box with the given axes holding all ``corners_ras`` (n, 3)."""
        local = corners_ras @ axes
        low, high = local.min(axis=0), local.max(axis=0)
        return cls(side, axes @ ((low + high) / 2), axes, high - low)


@dataclass(frozen=True, eq=False)
class Localization:
    """Both sides' boxes and how well the registration fits.

    ``template_to_input`` (4x4) maps MNI RAS mm to the input's RAS mm. ``normalised_mi`` is the
    normalised mutual information (H(A)+H(B))/H(A,B) of template and registered input over the
    template's brain (widened by 8 mm) at the registration spacing: 1 for unrelated images, 2 for
    identical ones (see :data:`MIN_NORMALISED_MI`).
    ``seconds`` is the wall time of the localisation.
    """

    left: HippocampusBox
    right: HippocampusBox
    template_to_input: np.ndarray
    normalised_mi: float
    seconds: float

    def box(self, side: str) -> HippocampusBox:
        return {"left": self.left, "right": self.right}[side]


def choose_mode(geometry: VolumeGeometry, mode: str = "auto") -> str:
    """"crop" (one hippocampus, today's single-structure path) or "head" (locate both sides).

    ``mode`` "crop" or "head" forces it; "auto" takes "crop" when every RAS extent of the field
    of view is under :data:`CROP_MODE_MAX_EXTENT_MM` (the MSD crops measure at most 59 mm), else "head".
    """
    if mode in ("crop", "head"):
        return mode
    if mode != "auto":
        raise ValueError(f"mode must be 'auto', 'crop' or 'head', got {mode!r}")
    low, high = geometry.bounds_ras()
    return "crop" if np.all(high - low < CROP_MODE_MAX_EXTENT_MM) else "head"


def template_path() -> Path:
    """The MNI152 2009a template inside the installed nilearn package.

    Raises ``LocalizationError`` with an install hint when nilearn is missing (Slicer does not
    bundle it).
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise LocalizationError(
            "Locating the hippocampi in a whole head needs the MNI152 template from the Python package "
            f"nilearn, which is not installed. Install it (`pip install {NILEARN_PIN}`; in Slicer's Python "
            f"console `slicer.util.pip_install('{NILEARN_PIN}')`), or place an ROI around one hippocampus.")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / TEMPLATE_FILE
    if not path.is_file():
        raise LocalizationError(f"The installed nilearn lacks its MNI152 template ({path}); reinstall "
                                f"`{NILEARN_PIN}`, or place an ROI around one hippocampus.")
    return path


def mni_box_corners(side: str, margin_mm: float = DEFAULT_MARGIN_MM) -> np.ndarray:
    """The eight corners (8, 3) of ``side``'s hippocampus box in MNI RAS mm, ``margin_mm`` added per side."""
    half = np.asarray(MNI_BOX_SIZE_MM) / 2 + margin_mm
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    return np.asarray(MNI_CENTRES_RAS[side]) + signs * half


def _sitk():
    import SimpleITK as sitk  # bundled by Slicer; imported late so the module loads without it

    return sitk


def _to_sitk(array_kji: np.ndarray, geometry: VolumeGeometry):
    """A SimpleITK image (LPS physical space) of a KJI array on ``geometry``."""
    sitk = _sitk()
    image = sitk.GetImageFromArray(np.asarray(array_kji, dtype=np.float32))  # KJI array -> IJK image
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(tuple(_FLIP @ np.asarray(geometry.origin)))
    image.SetDirection(tuple((_FLIP @ geometry.direction).ravel()))
    return image


def _in_ras_order(array_kji: np.ndarray, geometry: VolumeGeometry) -> tuple[np.ndarray, VolumeGeometry]:
    """The same voxels in RAS order when the grid's axes are the patient axes (re-indexed, no
    interpolation), else as given. The registration block-averages the input from its first voxel
    on (:func:`_shrink`), so without this the same scan stored RAS or LPS was registered from
    slightly different images and its boxes, and so its volumes, differed (a fresh-user trial:
    30 voxels of one coronal slice)."""
    if not is_axial(geometry):
        return array_kji, geometry
    ras_axis = np.argmax(np.abs(geometry.direction), axis=0)  # the patient axis of I, J, K
    spacing = np.empty(3)
    spacing[ras_axis] = geometry.spacing
    target = axis_aligned_grid(geometry, spacing, "RAS")
    if not same_voxel_centres(geometry, target):  # rounding: keep the input rather than interpolate it
        return array_kji, geometry
    return resample(array_kji, geometry, target, order=0), target


def _shrink(image, spacing_mm: float):
    """Block-average ``image`` to about ``spacing_mm`` (integer factors per axis): anti-aliased and fast."""
    sitk = _sitk()
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


@functools.lru_cache(maxsize=1)
def _template():
    """The template at the registration spacing and its brain mask widened by 8 mm (where the
    metric samples and the fit is scored)."""
    import nibabel

    sitk = _sitk()
    nifti = nibabel.load(str(template_path()))
    array = np.asarray(nifti.dataobj, dtype=np.float32).transpose(2, 1, 0)  # xyz -> KJI
    small = _shrink(_to_sitk(array, VolumeGeometry(nifti.affine, array.shape)), REGISTRATION_SPACING_MM)
    brain = sitk.BinaryThreshold(small, 1.0, 1e9, 1, 0)
    return small, sitk.BinaryDilate(brain, [2, 2, 2])


def _register(fixed, moving, sample_mask, seed: int):
    """Affine transform mapping template (fixed) points to input (moving) points, LPS."""
    sitk = _sitk()
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Similarity3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)

    def method(shrink: list[int], sigmas: list[float], iterations: int):
        registration = sitk.ImageRegistrationMethod()
        registration.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        registration.SetMetricSamplingStrategy(registration.RANDOM)
        # SimpleITK reads a seed of 0 as "seed from the wall clock" (sitkWallClock): shift it, so
        # that every seed, 0 included, gives the same samples on every run.
        registration.SetMetricSamplingPercentage(0.3, seed + 1)
        registration.SetMetricFixedMask(sample_mask)
        registration.SetInterpolator(sitk.sitkLinear)
        registration.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3,
                                                              numberOfIterations=iterations,
                                                              gradientMagnitudeTolerance=1e-6)
        registration.SetOptimizerScalesFromPhysicalShift()
        registration.SetShrinkFactorsPerLevel(shrink)
        registration.SetSmoothingSigmasPerLevel(sigmas)
        registration.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        return registration

    similarity = method([2, 1], [4.0, 0.0], 200)
    similarity.SetInitialTransform(initial, inPlace=True)
    similarity.Execute(fixed, moving)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(initial.GetCenter())
    affine.SetMatrix(initial.GetMatrix())
    affine.SetTranslation(initial.GetTranslation())
    refine = method([1], [0.0], 100)
    refine.SetInitialTransform(affine, inPlace=True)
    refine.Execute(fixed, moving)
    return affine


def _transform_matrix_ras(transform) -> np.ndarray:
    """The 4x4 RAS-to-RAS matrix of an ITK affine transform (which works in LPS)."""
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    centre = np.asarray(transform.GetCenter())
    offset = np.asarray(transform.GetTranslation()) + centre - matrix @ centre
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = matrix, offset
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip


def _normalised_mi(a: np.ndarray, b: np.ndarray, bins: int = NMI_BINS) -> float:
    """(H(A)+H(B))/H(A,B) of two samples (Studholme et al. 1999): 1 if independent, 2 if equal."""
    joint, _, _ = np.histogram2d(a, b, bins=bins)
    p = joint / max(joint.sum(), 1)

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    h_joint = entropy(p.ravel())
    return (entropy(p.sum(axis=0)) + entropy(p.sum(axis=1))) / h_joint if h_joint > 0 else 1.0


def _box_inside(box: HippocampusBox, geometry: VolumeGeometry, samples: int = 6) -> float:
    """Share of ``box`` (on a samples^3 lattice of points) that lies inside ``geometry``'s voxels."""
    steps = np.linspace(-0.5, 0.5, samples)
    local = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 3)
    ijk = geometry.ras_to_voxel(box.centre_ras + (local * box.size) @ box.axes.T)
    inside = np.all((ijk >= -0.5) & (ijk <= np.asarray(geometry.shape_ijk) - 0.5), axis=1)
    return float(inside.mean())


def locate_hippocampi(image: np.ndarray, geometry: VolumeGeometry, margin_mm: float = DEFAULT_MARGIN_MM,
                      seed: int = 0) -> Localization:
    """Find a box around each hippocampus of a head MRI ``image`` (KJI array on ``geometry``).

    Any orientation (oblique and left-handed grids included), spacing and intensity scale; the
    input is not modified. ``margin_mm`` widens the template box on each side before mapping;
    ``seed`` fixes the metric's random sampling (same seed, same boxes).

    Raises ``LocalizationError`` (an ``InputVolumeError``) when the field of view is too small
    for a head, the registration fails or does not fit (not a head, or no convergence), or a
    box falls outside the field of view; the message suggests a manual ROI.
    """
    started = time.perf_counter()
    manual = "Place an ROI box around one hippocampus instead (CLI: --roi R A S SIZE_R SIZE_A SIZE_S)."
    low, high = geometry.bounds_ras()
    extent = high - low
    if np.sort(extent)[1] < CROP_MODE_MAX_EXTENT_MM:
        raise LocalizationError(
            f"The field of view ({extent[0]:.0f} x {extent[1]:.0f} x {extent[2]:.0f} mm, R x A x S) is too small to "
            f"locate the hippocampi in: a head needs at least {CROP_MODE_MAX_EXTENT_MM:.0f} mm along two axes. "
            f"If this is a crop around one hippocampus, use crop mode. {manual}")
    values = np.asarray(image)
    if not np.isfinite(values).all() or float(values.max()) <= float(values.min()):
        raise LocalizationError(f"The input has no usable contrast (constant or non-finite values). {manual}")
    sitk = _sitk()
    fixed, sample_mask = _template()
    moving = _shrink(_to_sitk(*_in_ras_order(values, geometry)), REGISTRATION_SPACING_MM)
    try:
        transform = _register(fixed, moving, sample_mask, seed)
    except RuntimeError as error:  # ITK: e.g. too few samples overlap, or the optimiser diverged
        raise LocalizationError(f"Registration to the MNI152 template failed ({str(error).strip().splitlines()[-1]}). "
                                f"{manual}") from error
    template_to_input = _transform_matrix_ras(transform)
    scales = np.linalg.svd(template_to_input[:3, :3], compute_uv=False)
    if scales.min() < SCALE_RANGE[0] or scales.max() > SCALE_RANGE[1]:
        raise LocalizationError(
            f"Registration to the MNI152 template did not converge to a head (scale factors "
            f"{', '.join(f'{s:.2f}' for s in scales)}, expected {SCALE_RANGE[0]}-{SCALE_RANGE[1]}). "
            f"Is this a T1 MRI of a head? {manual}")
    registered = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, float("nan"))
    template_values = sitk.GetArrayViewFromImage(fixed)
    input_values = sitk.GetArrayViewFromImage(registered)
    inside = (sitk.GetArrayViewFromImage(sample_mask) > 0) & np.isfinite(input_values)
    nmi = _normalised_mi(template_values[inside], input_values[inside]) if inside.sum() > 100 else 1.0
    if nmi < MIN_NORMALISED_MI:
        raise LocalizationError(
            f"The input does not match the MNI152 head template after registration (normalised mutual "
            f"information {nmi:.3f}, at least {MIN_NORMALISED_MI} expected): not a head MRI, or the "
            f"registration did not converge. {manual}")
    # The rotation closest to the fitted linear map (polar decomposition) orients the boxes.
    u, _, vt = np.linalg.svd(template_to_input[:3, :3])
    rotation = u @ vt
    boxes = {}
    for side in SIDES:
        corners = mni_box_corners(side, margin_mm) @ template_to_input[:3, :3].T + template_to_input[:3, 3]
        core = mni_box_corners(side, 0.0) @ template_to_input[:3, :3].T + template_to_input[:3, 3]
        share = _box_inside(HippocampusBox.around(side, core, rotation), geometry)
        if share < MIN_BOX_INSIDE:
            raise LocalizationError(
                f"The {side} hippocampus lies outside the field of view (only {share:.0%} of its box is inside the "
                f"image): the scan does not cover it. {manual}")
        boxes[side] = HippocampusBox.around(side, corners, rotation)
    return Localization(boxes["left"], boxes["right"], template_to_input, nmi, time.perf_counter() - started)
