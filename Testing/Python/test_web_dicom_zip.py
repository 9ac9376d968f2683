"""Zipped DICOM series uploaded to the web app (``EfficientSegmentationWeb.dicom_zip``), headless.

The DICOM series are made from real NIfTI cases (``dicom_series.write_series``) in pytest's
temporary folders only.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import hippocampus_paths
from EfficientSegmentationCommon.errors import InputVolumeError
from EfficientSegmentationCommon.scene import create_scene, load_volume
from EfficientSegmentationCommon.volume_arrays import array_from_volume
from EfficientSegmentationWeb.dicom_zip import read_dicom_zip
from EfficientSegmentationWeb.session import SegmentationSession
from dicom_series import RESCALE_SLOPE, write_series, zip_folder

CASE = "hippocampus_006"


def oblique_copy(nifti: Path, target: Path) -> Path:
    """The same voxels on an oblique, anisotropic grid (rotated 20 degrees about two axes)."""
    source = nib.load(str(nifti))
    a, b = np.radians(20), np.radians(-35)
    rotation = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]) @ \
        np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 1.1, 1.7])
    affine[:3, 3] = (12.5, -30.25, 41.0)
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj, np.float32), affine), str(target))
    return target


def node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


@pytest.fixture
def temp_root(tmp_path, monkeypatch) -> Path:
    """Python's temporary folder for the test, to see that the session leaves nothing in it."""
    root = tmp_path / "server_tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.mark.parametrize("grid", ["as_scanned", "oblique"])
def test_a_zipped_series_loads_with_the_niftis_geometry_and_voxels(tmp_path, temp_root, grid):
    nifti, _ = hippocampus_paths(CASE)
    if grid == "oblique":
        nifti = oblique_copy(nifti, tmp_path / "oblique.nii.gz")
    write_series(sitk.ReadImage(str(nifti)), tmp_path / "dicom" / "series1", 1, "T1 test")
    upload = zip_folder(tmp_path / "dicom", tmp_path / "patient.zip")
    scene = create_scene()
    expected_voxels, expected_grid = array_from_volume(load_volume(scene, nifti))  # as Slicer loads it

    session = SegmentationSession(scene)
    node = session.load(upload)
    voxels, grid_read = array_from_volume(node)
    assert node.GetName() == "patient T1 test" and session.load_note == ""
    assert voxels.shape == expected_voxels.shape
    np.testing.assert_allclose(grid_read.ijk_to_ras, expected_grid.ijk_to_ras, atol=1e-5)
    np.testing.assert_allclose(voxels, expected_voxels, atol=RESCALE_SLOPE / 2 + 1e-3 * RESCALE_SLOPE,
                               rtol=1e-6)  # float32 rounding of values up to ~4000
    assert list(temp_root.iterdir()) == []  # the unpacked slices and the converted file are gone


def test_several_series_load_the_largest_and_say_which(tmp_path, temp_root):
    image = sitk.ReadImage(str(hippocampus_paths(CASE)[0]))
    write_series(image, tmp_path / "dicom" / "a", 1, "T1 full")
    write_series(image, tmp_path / "dicom" / "b", 2, "scout", slices=range(3))
    session = SegmentationSession(create_scene())
    node = session.load(zip_folder(tmp_path / "dicom", tmp_path / "two.zip"))
    assert array_from_volume(node)[0].shape[0] == image.GetDepth()
    assert session.load_note == ("'two.zip' holds 2 DICOM series; loaded the largest, 'T1 full' (34 slices). "
                                 "Not loaded: scout (3 files). To load another, upload a zip of that series alone.")


def bad_zips(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Zips the session must refuse, with the message each gives."""
    image = sitk.ReadImage(str(hippocampus_paths(CASE)[0]))
    cases = {}
    no_dicom = tmp_path / "no_dicom.zip"
    with zipfile.ZipFile(no_dicom, "w") as archive:
        archive.writestr("notes.txt", "not a DICOM file")
        archive.write(hippocampus_paths(CASE)[0], "case.nii.gz")
    cases["no series"] = (no_dicom, r"'no_dicom.zip' holds no DICOM series")
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04 this is not really a zip file")
    cases["corrupt"] = (corrupt, r"'corrupt.zip' is not a readable zip file")
    write_series(image, tmp_path / "gap", 3, "gap", slices=[i for i in range(image.GetDepth()) if i != 10])
    cases["missing slice"] = (zip_folder(tmp_path / "gap", tmp_path / "gap.zip"), r"not evenly spaced")
    write_series(image, tmp_path / "twice" / "a", 4, "twice")
    write_series(image, tmp_path / "twice" / "b", 4, "twice")  # the same series UID and positions again
    (tmp_path / "twice" / "b").rename(tmp_path / "twice" / "b2")
    cases["repeated positions"] = (zip_folder(tmp_path / "twice", tmp_path / "twice.zip"),
                                   r"several images at one slice position")
    return cases


def test_bad_zips_give_a_clear_message_and_leave_the_scene(tmp_path, temp_root):
    session = SegmentationSession(create_scene())
    session.load(hippocampus_paths(CASE)[0])
    before = node_ids(session.scene)
    for name, (path, message) in bad_zips(tmp_path).items():
        with pytest.raises(InputVolumeError, match=message):
            session.load(path)
        assert node_ids(session.scene) == before, name
        assert len(session.volumes) == 1, name
    assert list(temp_root.iterdir()) == []


def test_truncated_zip_is_refused(tmp_path):
    image = sitk.ReadImage(str(hippocampus_paths(CASE)[0]))
    write_series(image, tmp_path / "dicom", 5, "cut")
    whole = zip_folder(tmp_path / "dicom", tmp_path / "whole.zip")
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InputVolumeError, match="'cut.zip' is not a readable zip file"):
        read_dicom_zip(cut, _work_folder(tmp_path))


def _work_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir(exist_ok=True)
    for child in folder.iterdir():
        if child.is_dir():
            for item in child.iterdir():
                item.unlink()
            child.rmdir()
        else:
            child.unlink()
    return folder


def test_member_names_cannot_leave_the_work_folder(tmp_path):
    image = sitk.ReadImage(str(hippocampus_paths(CASE)[0]))
    write_series(image, tmp_path / "dicom", 6, "traversal")
    upload = zip_folder(tmp_path / "dicom", tmp_path / "evil.zip", prefix="../../escaped/")
    with zipfile.ZipFile(upload) as archive:
        assert archive.namelist()[0].startswith("../../escaped/")
    work = tmp_path / "deep" / "er" / "work"
    work.mkdir(parents=True)
    series = read_dicom_zip(upload, work)
    assert series.image_path.parent == work
    assert not (tmp_path / "deep" / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert all(path.resolve().is_relative_to(work.resolve()) for path in work.rglob("*"))


def test_a_zip_bomb_stops_at_the_size_limit(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.dcm", bytes(4 * 1024 ** 2))  # 4 MiB of zeros: a 4 kB member
    assert bomb.stat().st_size < 20000
    work = _work_folder(tmp_path)
    with pytest.raises(InputVolumeError, match=r"'bomb.zip' unpacks to more than 1048576 bytes"):
        read_dicom_zip(bomb, work, max_bytes=1024 ** 2)
    assert sum(path.stat().st_size for path in work.rglob("*") if path.is_file()) == 0  # refused before writing
    with pytest.raises(InputVolumeError, match=r"holds 1 files, more than the 0"):
        read_dicom_zip(bomb, _work_folder(tmp_path), max_files=0)
