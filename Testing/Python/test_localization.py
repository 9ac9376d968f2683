"""Locating both hippocampi in whole-head and whole-brain MRI (MedNCASegmentLib.localization).

Real data: the MNI152 2009a template that nilearn ships (moved by seeded rigid transforms, and
re-encoded LPS or left-handed), the BraTS contrast-T1 brains and an MSD crop. Where the
hippocampi are in the template comes from an atlas independent of the located boxes: the
hippocampal head and tail ROIs of Seitzman et al. 2018, also shipped by nilearn.
"""

from __future__ import annotations

import importlib.util

import nibabel
import numpy as np
import pytest
from conftest import DATA_ROOT, hippocampus_paths
from EfficientSegmentationCommon.errors import InputVolumeError
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.grids import axis_aligned_grid, crop_to_corners
from EfficientSegmentationCommon.resampling import resample
from MedNCASegmentLib import localization
from MedNCASegmentLib.localization import LocalizationError, choose_mode, locate_hippocampi
from scipy.spatial.transform import Rotation

BRATS = DATA_ROOT / "BraTS_sample"


def load_nifti(path) -> tuple[np.ndarray, VolumeGeometry]:
    """A NIfTI file as a KJI array and its grid (nibabel's affine is RAS, as Slicer's)."""
    image = nibabel.load(str(path))
    array = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)
    return array, VolumeGeometry(image.affine, array.shape)


@pytest.fixture(scope="module")
def template() -> tuple[np.ndarray, VolumeGeometry]:
    return load_nifti(localization.template_path())


@pytest.fixture(scope="module")
def hippocampus_rois() -> dict[str, np.ndarray]:
    """Seitzman et al. 2018 ROIs labelled hippocampus (MNI RAS mm), per side: points (n, 3) with
    their radius added as the corners of a cube around each centre."""
    data = localization.template_path().parent
    rois = np.loadtxt(data / "seitzman_2018_ROIs_300inVol_MNI_allInfo.txt", skiprows=1, usecols=(0, 1, 2, 3))
    header = (data / "seitzman_2018_ROIs_anatomicalLabels.txt").read_text().splitlines()[0]
    names = {name: int(code) for code, name in (item.split("=") for item in header.split(","))}
    regions = np.loadtxt(data / "seitzman_2018_ROIs_anatomicalLabels.txt", skiprows=1)
    hippocampus = rois[regions == names["hippocampus"]]
    assert len(hippocampus) == 4  # head and tail, both sides
    cube = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)
    sides = {}
    for side, on_side in (("left", hippocampus[:, 0] < 0), ("right", hippocampus[:, 0] > 0)):
        centres, radii = hippocampus[on_side, :3], hippocampus[on_side, 3]
        sides[side] = (centres[:, None, :] + radii[:, None, None] * cube[None]).reshape(-1, 3)
    return sides


def moved(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ transform[:3, :3].T + transform[:3, 3]


def assert_boxes_hold(result, rois: dict[str, np.ndarray], transform: np.ndarray) -> None:
    for side in localization.SIDES:
        box = result.box(side)
        inside = box.contains(moved(transform, rois[side]))
        assert inside.all(), f"{side}: {(~inside).sum()} ROI points outside box {box.corners_ras}"
        other = result.box("right" if side == "left" else "left")
        assert not other.contains(moved(transform, rois[side])).any(), f"{side} hippocampus inside the other side's box"


def test_template_itself(template, hippocampus_rois):
    image, geometry = template
    result = locate_hippocampi(image, geometry)
    assert_boxes_hold(result, hippocampus_rois, np.eye(4))
    np.testing.assert_allclose(result.template_to_input, np.eye(4), atol=0.1)
    assert result.left.centre_ras[0] < 0 < result.right.centre_ras[0]  # MNI: x < 0 is left
    # The margin widens the template's 30 x 40 x 40 mm box on both sides.
    np.testing.assert_allclose(result.left.size, np.add(localization.MNI_BOX_SIZE_MM, 10.0), atol=1.0)
    assert result.normalised_mi > 1.9
    # The model's crop (wholehead.segment_side): the 1 mm lattice of the input voxels under the box, covering it.
    _, under_box = crop_to_corners(geometry, result.left.corners_ras, "the left box")
    grid = axis_aligned_grid(under_box, (1.0, 1.0, 1.0))
    assert grid.shape_ijk == under_box.shape_ijk and grid.matches(under_box, atol=1e-6)
    low, high = grid.bounds_ras()
    assert np.all(low <= result.left.corners_ras.min(axis=0) + 1e-6)
    assert np.all(high >= result.left.corners_ras.max(axis=0) - 1e-6)


@pytest.mark.parametrize("seed", [0, 7])
def test_the_same_seed_locates_the_same_boxes(template, seed):
    """Registration samples the metric at random points: a fixed seed (0 too, which SimpleITK
    would read as "from the wall clock") gives the same boxes on every call, up to the rounding
    of ITK's multithreaded sums (with seed 0 read as the clock they moved by about 0.04 mm)."""
    image, geometry = template
    first, second = (locate_hippocampi(image, geometry, seed=seed) for _ in range(2))
    np.testing.assert_allclose(first.template_to_input, second.template_to_input, rtol=0, atol=1e-9)
    for side in ("left", "right"):
        np.testing.assert_allclose(first.box(side).corners_ras, second.box(side).corners_ras, rtol=0, atol=1e-9)


def random_rigid(seed: int) -> np.ndarray:
    """A RAS rigid transform: rotations up to 30 degrees about each axis, shifts up to 30 mm."""
    rng = np.random.default_rng(seed)
    transform = np.eye(4)
    transform[:3, :3] = Rotation.from_euler("xyz", rng.uniform(-30, 30, 3), degrees=True).as_matrix()
    transform[:3, 3] = rng.uniform(-30, 30, 3)
    return transform


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rigidly_moved_template(template, hippocampus_rois, seed):
    """The head moved in the scanner: once as an oblique grid (the voxels untouched), once
    resampled onto an axis-aligned 1.5 mm grid, as a scanner would store a rotated head."""
    image, geometry = template
    transform = random_rigid(seed)
    oblique = VolumeGeometry(transform @ geometry.ijk_to_ras, geometry.shape_kji)
    assert_boxes_hold(locate_hippocampi(image, oblique), hippocampus_rois, transform)
    scanner = axis_aligned_grid(oblique, (1.5, 1.5, 1.5))
    assert_boxes_hold(locate_hippocampi(resample(image, oblique, scanner), scanner), hippocampus_rois, transform)


def test_child_sized_head_on_anisotropic_grid(template, hippocampus_rois):
    """A head 0.85 times the template's size (a child's), tilted, on 1.2 x 1.2 x 2.5 mm voxels."""
    image, geometry = template
    transform = np.eye(4)
    transform[:3, :3] = 0.85 * Rotation.from_euler("xyz", (15, -10, 20), degrees=True).as_matrix()
    transform[:3, 3] = (10, -20, 15)
    moved_grid = VolumeGeometry(transform @ geometry.ijk_to_ras, geometry.shape_kji)
    scanner = axis_aligned_grid(moved_grid, (1.2, 1.2, 2.5))
    result = locate_hippocampi(resample(image, moved_grid, scanner), scanner)
    assert_boxes_hold(result, hippocampus_rois, transform)
    np.testing.assert_allclose(np.linalg.svd(result.template_to_input[:3, :3], compute_uv=False), 0.85, atol=0.03)


def test_field_of_view_missing_the_hippocampi_is_refused(template):
    """A scan that stops above the temporal lobes' base: most of the brain, not the hippocampi."""
    image, geometry = template
    first = int(0.3 * geometry.shape_kji[0])  # drop the lowest 30 % of the axial slices
    matrix = geometry.ijk_to_ras.copy()
    matrix[:3, 3] = geometry.voxel_to_ras((0, 0, first))
    with pytest.raises(LocalizationError, match="outside the field of view"):
        locate_hippocampi(image[first:], VolumeGeometry(matrix, image[first:].shape))


@pytest.mark.parametrize("flipped_axes", [(0, 1), (0,)], ids=["LPS", "LAS-left-handed"])
def test_reencoded_template(template, hippocampus_rois, flipped_axes):
    """The same head stored in another voxel order: the boxes are the ones of the head as stored
    (a fresh-user trial: they moved by up to 0.05 mm, enough for 30 voxels of the result to differ),
    each on its physical side."""
    image, geometry = template
    flip = np.eye(4)
    for axis in flipped_axes:  # voxel axis i (0) or j (1) runs the other way
        flip[axis, axis], flip[axis, 3] = -1, geometry.shape_ijk[axis] - 1
    array = np.flip(image, axis=[2 - axis for axis in flipped_axes]).copy()
    reencoded = VolumeGeometry(geometry.ijk_to_ras @ flip, geometry.shape_kji)
    assert (np.linalg.det(reencoded.ijk_to_ras[:3, :3]) < 0) == (len(flipped_axes) == 1)
    result = locate_hippocampi(array, reencoded)
    assert_boxes_hold(result, hippocampus_rois, np.eye(4))
    assert result.left.centre_ras[0] < 0 < result.right.centre_ras[0]
    as_stored = locate_hippocampi(image, geometry)
    for side in localization.SIDES:
        assert np.allclose(result.box(side).corners_ras, as_stored.box(side).corners_ras, atol=1e-6)


@pytest.mark.parametrize("case", ["brats_2013_pat0001_1", "brats_2013_pat0006_1"])
def test_brats_contrast_t1_brain(case):
    """Skull-stripped, contrast-enhanced, z-scored, stored LPS (pat0006 with a partial field of
    view): both boxes lie in the brain, one per hemisphere, each at the level of the temporal lobes."""
    image, geometry = load_nifti(BRATS / case / "T1c_subtrMeanDivStd.nii.gz")
    brain, _ = load_nifti(BRATS / case / "brainmask.nii.gz")
    result = locate_hippocampi(image, geometry)
    midline = geometry.voxel_to_ras(np.argwhere(brain > 0)[:, ::-1].mean(axis=0))
    for side in localization.SIDES:
        box = result.box(side)
        ijk = np.round(geometry.ras_to_voxel(box.centre_ras)).astype(int)
        assert brain[ijk[2], ijk[1], ijk[0]] > 0, f"{side} box centre outside the brain"
        assert (box.centre_ras[0] < midline[0]) == (side == "left"), f"{side} box on the wrong side"
        assert 30 < box.size.min() and box.size.max() < 80  # a hippocampus box, not a hemisphere
    assert result.normalised_mi > localization.MIN_NORMALISED_MI


def test_not_a_head_is_refused(template):
    """The template's own voxels in random order: same histogram, no anatomy."""
    image, geometry = template
    scrambled = np.random.default_rng(0).permutation(image.ravel()).reshape(image.shape)
    with pytest.raises(LocalizationError, match="ROI"):
        locate_hippocampi(scrambled, geometry)


def test_crop_is_refused_and_goes_crop_mode():
    image, _ = hippocampus_paths("hippocampus_001")
    array, geometry = load_nifti(image)
    assert choose_mode(geometry) == "crop"
    assert choose_mode(geometry, "head") == "head"
    with pytest.raises(LocalizationError, match="field of view .* too small") as raised:
        locate_hippocampi(array, geometry)
    assert isinstance(raised.value, InputVolumeError) and "crop mode" in str(raised.value)


def test_mode_of_heads(template):
    _, geometry = template
    assert choose_mode(geometry) == "head"
    assert choose_mode(geometry, "crop") == "crop"
    _, brats = load_nifti(BRATS / "brats_2013_pat0001_1" / "T1c_subtrMeanDivStd.nii.gz")
    assert choose_mode(brats) == "head"
    with pytest.raises(ValueError, match="mode"):
        choose_mode(geometry, "whole")


def test_constant_image_is_refused(template):
    _, geometry = template
    with pytest.raises(LocalizationError, match="no usable contrast"):
        locate_hippocampi(np.zeros(geometry.shape_kji, np.float32), geometry)


def test_missing_nilearn_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nilearn" else real(name, *a))
    with pytest.raises(LocalizationError, match=r"pip install nilearn==\d"):
        localization.template_path()
