"""Input files as they come from the field: header faults are read before Slicer's reader, refused
or reported naming the file, and label maps go back onto the file's own grid (issue 11, 16).

Every file is built in ``tmp_path`` from a real MSD case re-encoded the way the faults occur.
"""

from __future__ import annotations

import gzip

import nibabel
import numpy as np
import pytest
from conftest import hippocampus_paths
from EfficientSegmentationCommon.batch import unique_names
from EfficientSegmentationCommon.errors import InputVolumeError
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.input_files import (
    check_source_files,
    file_order_labels,
    inspect_file,
    save_labels_nifti,
)
from EfficientSegmentationCommon.scene import load_volume, name_from_path
from EfficientSegmentationCommon.volume_arrays import voxel_view

SHIFT_MM = np.array([20.0, -12.0, 7.0])


@pytest.fixture(scope="module")
def case():
    """The real image (i, j, k order, as nibabel reads it) and header of an MSD case."""
    image = nibabel.load(str(hippocampus_paths("hippocampus_001")[0]))
    return np.asarray(image.dataobj), image.header.copy()


def encode(path, array, header, qform=None, qform_code=0, sform=None, sform_code=0):
    """Write ``array`` with exactly these transforms and codes (None: that transform unset)."""
    image = nibabel.Nifti1Image(array, None, header.copy())
    image.set_qform(qform, code=qform_code)
    image.set_sform(sform, code=sform_code)
    image.to_filename(str(path))
    return path


def reversed_k(array, affine):
    """The same image with its K axis stored the other way round: a left-handed grid for a
    right-handed input (the issue's recipe)."""
    flip = np.diag([1.0, 1.0, -1.0, 1.0])
    flip[2, 3] = array.shape[2] - 1
    return np.ascontiguousarray(array[:, :, ::-1]), affine @ flip


def ras_of_voxels(affine, shape):
    """RAS position of every voxel centre, (i, j, k, 3)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return grid @ affine[:3, :3].T + affine[:3, 3]


def test_left_handed_file_loads_in_place_and_labels_go_back_on_its_own_grid(scene, case, tmp_path):
    array, header = case
    flipped, affine = reversed_k(array, header.get_best_affine())
    path = encode(tmp_path / "lefthanded.nii.gz", flipped, header, affine, 1, affine, 1)
    node = load_volume(scene, path)
    geometry = VolumeGeometry.from_volume_node(node)
    # Slicer's reader reverses K again; the voxels still lie where the file puts them.
    assert not np.allclose(geometry.ijk_to_ras, affine)
    node_ijk = np.asarray(voxel_view(node)).transpose(2, 1, 0)
    assert np.array_equal(node_ijk, array)
    assert np.allclose(ras_of_voxels(geometry.ijk_to_ras, node_ijk.shape)[:, :, ::-1], ras_of_voxels(affine, flipped.shape))
    # A label map computed on the node is written on the file's grid, voxel for voxel.
    labels = (np.asarray(voxel_view(node)) > 60).astype(np.uint8)
    assert save_labels_nifti(labels, geometry, tmp_path / "labels.nii.gz", inspect_file(path))
    written = nibabel.load(str(tmp_path / "labels.nii.gz"))
    assert written.shape == flipped.shape and np.allclose(written.affine, affine)
    assert np.array_equal(np.asarray(written.dataobj), (flipped > 60).astype(np.uint8))
    assert np.allclose(written.header.get_qform(), written.header.get_sform())


def test_disagreeing_qform_and_sform_place_the_volume_by_the_sform_with_a_warning(scene, case, tmp_path):
    array, header = case
    qform = header.get_best_affine()
    sform = qform.copy()
    sform[:3, 3] += SHIFT_MM
    path = encode(tmp_path / "shifted.nii.gz", array, header, qform, 1, sform, 2)
    node = load_volume(scene, path)
    geometry = VolumeGeometry.from_volume_node(node)
    assert np.allclose(geometry.ijk_to_ras, sform)  # as nibabel and FSL (Slicer's reader alone takes the qform)
    assert np.allclose(geometry.ijk_to_ras, nibabel.load(str(path)).affine)
    (warning,) = check_source_files([node])
    distance = np.linalg.norm(SHIFT_MM)
    assert "'shifted.nii.gz'" in warning and f"{distance:.1f} mm apart" in warning
    assert "(1.0, 1.0, 1.0) mm" in warning and "(21.0, -11.0, 8.0) mm" in warning and "placed by the sform" in warning
    save_labels_nifti(np.asarray(voxel_view(node)), geometry, tmp_path / "out.nii.gz", inspect_file(path))
    written = nibabel.load(str(tmp_path / "out.nii.gz")).header
    assert np.allclose(written.get_qform(), sform) and np.allclose(written.get_sform(), sform)
    assert int(written["qform_code"]) == int(written["sform_code"]) == 2


def test_a_volume_slicer_placed_by_the_qform_is_reported_as_such(scene, case, tmp_path):
    """Loaded by Slicer's own reader (the panel's case), the node cannot be moved: the warning says
    which transform it got and that other tools disagree."""
    from EfficientSegmentationCommon.scene import _volumes_logic

    array, header = case
    qform = header.get_best_affine()
    sform = qform.copy()
    sform[:3, 3] += SHIFT_MM
    path = encode(tmp_path / "shifted.nii.gz", array, header, qform, 1, sform, 2)
    node = _volumes_logic(scene).AddArchetypeVolume(str(path), "shifted", 0)
    (warning,) = check_source_files([node])
    assert "placed by the qform (Slicer's reader; nibabel and FSL use the sform)" in warning


def test_agreeing_transforms_give_no_warning_and_leave_the_grid_exact(scene, hippocampus):
    assert check_source_files([hippocampus.volume]) == []
    report = inspect_file(hippocampus_paths("hippocampus_001")[0])
    assert report.problem is None and report.transform in ("qform", "sform")


def test_file_without_orientation_is_refused_naming_it(scene, case, tmp_path):
    array, header = case
    path = encode(tmp_path / "noorient.nii.gz", array, header)
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputVolumeError, match=r"'noorient\.nii\.gz' has no orientation \(its qform_code and sform_code"):
        load_volume(scene, path)
    assert scene.GetNumberOfNodes() == count
    # Read by Slicer's own reader (as the panel does), the logic's check refuses it as well.
    from EfficientSegmentationCommon.scene import _volumes_logic

    node = _volumes_logic(scene).AddArchetypeVolume(str(path), "noorient", 0)
    with pytest.raises(InputVolumeError, match="has no orientation"):
        check_source_files([node])


@pytest.mark.parametrize("stack, message", [
    (lambda a: np.stack([a, a], axis=-1), r"'stacked\.nii\.gz' is a 4D image with 2 frames: give a 3D volume"),
    (lambda a: np.stack([a, a // 2], axis=-1)[:, :, :, None, :], r"'stacked\.nii\.gz' has 2 components per voxel"),
])
def test_4d_and_multicomponent_files_are_refused_quietly(scene, case, tmp_path, capfd, stack, message):
    array, header = case
    image = nibabel.Nifti1Image(stack(array), header.get_best_affine())
    image.to_filename(str(tmp_path / "stacked.nii.gz"))
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputVolumeError, match=message):
        load_volume(scene, tmp_path / "stacked.nii.gz")
    assert scene.GetNumberOfNodes() == count
    captured = capfd.readouterr()
    assert "ERR" not in captured.out + captured.err


def test_unreadable_file_is_refused_quietly(scene, tmp_path, capfd):
    (tmp_path / "notanimage.nrrd").write_text("NRRD0004\nthis is not a header\n")
    with pytest.raises(InputVolumeError, match=r"notanimage\.nrrd': it is unreadable"):
        load_volume(scene, tmp_path / "notanimage.nrrd")
    captured = capfd.readouterr()
    assert (captured.out + captured.err).count("\n") < 5


def test_file_cut_short_is_refused_naming_it(scene, tmp_path):
    image_path, _ = hippocampus_paths("hippocampus_001")
    (tmp_path / "t.nii.gz").write_bytes(image_path.read_bytes()[:6000])  # head -c 6000 case.nii.gz > t.nii.gz
    (tmp_path / "u.nii").write_bytes(gzip.decompress(image_path.read_bytes())[:20000])
    count = scene.GetNumberOfNodes()
    for name in ("t.nii.gz", "u.nii"):
        with pytest.raises(InputVolumeError, match=rf"'{name.replace('.', '[.]')}' is damaged: its voxel data cannot be read"):
            load_volume(scene, tmp_path / name)
    assert scene.GetNumberOfNodes() == count


def test_a_nii_beside_a_nii_gz_of_the_same_name_does_not_replace_its_voxels(scene, tmp_path):
    """A fresh-user trial: with ``scan.nii`` (another case) beside ``scan.nii.gz``, Slicer's reader
    took the ``.nii``'s voxels under the ``.nii.gz``'s header and the result was reported ``ok``."""
    import slicer

    named, _ = hippocampus_paths("hippocampus_001")
    other, _ = hippocampus_paths("hippocampus_003")
    (tmp_path / "scan.nii.gz").write_bytes(named.read_bytes())
    (tmp_path / "scan.nii").write_bytes(gzip.decompress(other.read_bytes()))
    expected = np.asarray(nibabel.load(str(named)).dataobj)
    volume = load_volume(scene, tmp_path / "scan.nii.gz")
    assert np.array_equal(np.sort(voxel_view(volume).ravel()), np.sort(expected.ravel()))
    assert volume.GetStorageNode().GetFileName() == str(tmp_path / "scan.nii.gz")
    assert check_source_files([volume]) == []
    # Loaded by Slicer's own reader (the panel's case): refused, naming both files.
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    wrong = logic.AddArchetypeVolume(str(tmp_path / "scan.nii.gz"), "scan", 0)
    with pytest.raises(InputVolumeError, match=r"loaded from 'scan\.nii\.gz', but Slicer's NIfTI reader took its "
                                               r"voxels from 'scan\.nii' beside it, another file"):
        check_source_files([wrong])
    # The same scan stored flipped beside it (the same voxel values, in another order), and a folder.
    stored = nibabel.load(str(named))
    flipped = nibabel.Nifti1Image(np.ascontiguousarray(np.asarray(stored.dataobj)[::-1]), stored.affine, stored.header)
    (tmp_path / "scan.nii").unlink()
    flipped.to_filename(str(tmp_path / "scan.nii"))
    with pytest.raises(InputVolumeError, match="another file"):
        check_source_files([logic.AddArchetypeVolume(str(tmp_path / "scan.nii.gz"), "flipped", 0)])
    (tmp_path / "scan.nii").unlink()
    (tmp_path / "scan.nii").mkdir()
    volume = load_volume(scene, tmp_path / "scan.nii.gz")
    assert np.array_equal(np.sort(voxel_view(volume).ravel()), np.sort(expected.ravel()))
    with pytest.raises(InputVolumeError, match="beside it, a folder"):
        check_source_files([logic.AddArchetypeVolume(str(tmp_path / "scan.nii.gz"), "zeros", 0)])
    # An uncompressed file named .nii.gz is not called damaged.
    (tmp_path / "plain.nii.gz").write_bytes(gzip.decompress(named.read_bytes()))
    with pytest.raises(InputVolumeError, match=r"'plain\.nii\.gz' is an uncompressed NIfTI file named \.nii\.gz; "
                                               r"rename it to 'plain\.nii'"):
        load_volume(scene, tmp_path / "plain.nii.gz")
    (tmp_path / "packed.nii").write_bytes(named.read_bytes())  # and the other way round
    with pytest.raises(InputVolumeError, match=r"'packed\.nii' is gzip-compressed but named \.nii; rename it to "
                                               r"'packed\.nii\.gz'"):
        load_volume(scene, tmp_path / "packed.nii")


def test_non_finite_voxels_in_a_file_are_reported_naming_it(scene, case, tmp_path):
    array, header = case
    damaged = array.astype(np.float32)
    damaged[3, 4, 5] = np.nan
    damaged[6, 7, 8:10] = np.inf
    image = nibabel.Nifti1Image(damaged, header.get_best_affine())
    image.to_filename(str(tmp_path / "nan.nii.gz"))
    with pytest.raises(InputVolumeError, match=r"'nan\.nii\.gz' contains 1 NaN and 2 infinite voxels, which Slicer"):
        load_volume(scene, tmp_path / "nan.nii.gz")


def test_the_same_file_for_two_inputs_is_refused(scene, hippocampus):
    other = load_volume(scene, hippocampus_paths("hippocampus_001")[0], "again")
    with pytest.raises(InputVolumeError, match="same file 'hippocampus_001.nii.gz'"):
        check_source_files([hippocampus.volume, other])
    with pytest.raises(InputVolumeError, match="same volume was given for two inputs"):
        check_source_files([hippocampus.volume, hippocampus.volume])


def test_roi_box_results_are_placed_into_the_file_grid(case, tmp_path):
    array, header = case
    flipped, affine = reversed_k(array, header.get_best_affine())
    path = encode(tmp_path / "lefthanded.nii.gz", flipped, header, affine, 1, affine, 1)
    report = inspect_file(path)
    # A box of the right-handed (node) grid: I 5..14, J 10..29, K 3..9.
    node_affine = header.get_best_affine()
    box = node_affine.copy()
    box[:3, 3] = node_affine[:3, :3] @ [5, 10, 3] + node_affine[:3, 3]
    labels = np.ones((7, 20, 10), np.uint8)  # KJI
    out = file_order_labels(labels, VolumeGeometry(box, labels.shape), report)
    expected = np.zeros(array.shape, np.uint8)
    expected[5:15, 10:30, 3:10] = 1
    assert np.array_equal(out, expected[:, :, ::-1])
    # A grid that is not the file's up to axis order (half a voxel off) is not mapped.
    shifted = box.copy()
    shifted[0, 3] += 0.5
    assert file_order_labels(labels, VolumeGeometry(shifted, labels.shape), report) is None


def test_random_header_encodings_load_in_place_and_write_back_exactly(scene, case, tmp_path):
    """Property: any signed axis permutation, handedness and qform/sform mix of one real case is
    loaded where nibabel puts it, and labels written from the node come back as the file's voxels."""
    array, header = case
    base = header.get_best_affine()
    rng = np.random.default_rng(11)
    for trial in range(12):
        permutation = rng.permutation(3)
        signs = rng.choice([-1, 1], size=3)
        data = np.transpose(array, permutation)
        matrix = np.zeros((4, 4))
        matrix[3, 3] = 1
        matrix[permutation, np.arange(3)] = 1  # new index a -> old index permutation[a]
        for axis, sign in enumerate(signs):
            if sign < 0:
                data = np.flip(data, axis)
                flip = np.eye(4)
                flip[axis, axis], flip[axis, 3] = -1, data.shape[axis] - 1
                matrix = matrix @ flip
        data = np.ascontiguousarray(data)
        affine = base @ matrix
        other = affine.copy()
        other[:3, 3] += rng.uniform(-30, 30, size=3)
        mode = trial % 4
        transforms = [dict(qform=affine, qform_code=1, sform=affine, sform_code=1), dict(sform=affine, sform_code=2),
                      dict(qform=affine, qform_code=1), dict(qform=other, qform_code=1, sform=affine, sform_code=2)][mode]
        path = encode(tmp_path / f"encoding{trial}.nii.gz", data, header, **transforms)
        node = load_volume(scene, path)
        geometry = VolumeGeometry.from_volume_node(node)
        node_ijk = np.asarray(voxel_view(node)).transpose(2, 1, 0)
        # Same set of (RAS position, value) pairs as nibabel's reading of the file.
        order = lambda ras: np.lexsort(np.round(ras.reshape(-1, 3), 3).T)  # noqa: E731
        node_ras, file_ras = ras_of_voxels(geometry.ijk_to_ras, node_ijk.shape), ras_of_voxels(affine, data.shape)
        assert np.allclose(node_ras.reshape(-1, 3)[order(node_ras)], file_ras.reshape(-1, 3)[order(file_ras)], atol=1e-4)
        assert np.array_equal(node_ijk.reshape(-1)[order(node_ras)], data.reshape(-1)[order(file_ras)])
        assert len(check_source_files([node])) == (1 if mode == 3 else 0)
        save_labels_nifti(np.asarray(voxel_view(node)), geometry, tmp_path / "out.nii.gz", inspect_file(path))
        written = nibabel.load(str(tmp_path / "out.nii.gz"))
        assert np.allclose(written.affine, affine, atol=1e-5) and np.array_equal(np.asarray(written.dataobj), data)
        scene.RemoveNode(node)


def test_same_file_names_in_different_folders_get_distinct_names(tmp_path):
    paths = [str(tmp_path / f"sub-0{n}" / "anat" / "T1w.nii.gz") for n in (1, 2)] + [str(tmp_path / "x" / "other.nii.gz")]
    kept, names, notes = unique_names(paths + [paths[0]], name_from_path)
    assert kept == paths
    assert [names[p] for p in paths] == ["sub-01_T1w", "sub-02_T1w", "other"]
    assert any("sub-01_T1w, sub-02_T1w" in note for note in notes)
    assert any("given more than once" in note for note in notes)
    folders = [str(tmp_path / site / "case1") for site in ("siteA", "siteB")]
    _, names, _ = unique_names(folders, lambda p: p.rstrip("/").rsplit("/", 1)[-1])
    assert [names[f] for f in folders] == ["siteA_case1", "siteB_case1"]
    same_folder = [str(tmp_path / "case.nii.gz"), str(tmp_path / "case.nrrd")]
    _, names, notes = unique_names(same_folder, name_from_path)
    assert [names[p] for p in same_folder] == ["case", "case_2"]
    assert notes == [f"'{same_folder[1]}' is written as 'case_2': another input has its name."]  # one note


def test_4d_files_of_other_formats_are_refused_from_their_header(scene, case, tmp_path):
    import SimpleITK as sitk

    array, _ = case
    frames = sitk.JoinSeries([sitk.GetImageFromArray(array.T.copy()), sitk.GetImageFromArray(array.T.copy())])
    sitk.WriteImage(frames, str(tmp_path / "frames.nrrd"))
    with pytest.raises(InputVolumeError, match=r"'frames\.nrrd' is a 4D image with 2 frames"):
        load_volume(scene, tmp_path / "frames.nrrd")


def test_device_names_are_checked_against_what_this_computer_has(monkeypatch):
    from EfficientSegmentationCommon import torch_setup

    monkeypatch.setattr(torch_setup, "available_devices", lambda: ["cpu"])
    assert torch_setup.check_device("CPU") == "cpu"
    for device in ("cuda", "gpu", "cuda:1"):
        with pytest.raises(ValueError, match=rf"Device '{device}' cannot be used: .*Available: cpu\."):
            torch_setup.check_device(device)
    with pytest.raises(ValueError, match="Unknown device 'tpu'"):
        torch_setup.check_device("tpu")
    # With one GPU (the branch a CUDA machine takes; the test machine has none).
    monkeypatch.setattr(torch_setup, "available_devices", lambda: ["cpu", "cuda:0"])
    assert [torch_setup.check_device(d) for d in ("gpu", "cuda", "cuda:0", "gpu:0")] == ["cuda", "cuda", "cuda:0", "cuda:0"]
    with pytest.raises(ValueError, match=r"'cuda:1' does not exist: this computer has 1 CUDA GPU\(s\). Available: cpu, cuda:0"):
        torch_setup.check_device("cuda:1")


def test_panel_input_check_names_a_damaged_source_file(scene, case, tmp_path):
    """A volume Slicer read from a file with NaN voxels (they became 0) is flagged in the panel
    before Segment is pressed, with the same message as elsewhere."""
    from EfficientSegmentationCommon.module_logic import LibraryLogicMixin
    from EfficientSegmentationCommon.scene import _volumes_logic

    array, header = case
    damaged = array.astype(np.float32)
    damaged[1, 2, 3] = np.nan
    nibabel.Nifti1Image(damaged, header.get_best_affine()).to_filename(str(tmp_path / "nan.nii.gz"))
    node = _volumes_logic(scene).AddArchetypeVolume(str(tmp_path / "nan.nii.gz"), "nan", 0)
    assert not np.isnan(voxel_view(node)).any()  # Slicer's reader hid them
    logic = LibraryLogicMixin.__new__(LibraryLogicMixin)  # its __init__ needs the Slicer application
    logic._inputChecks = {}
    assert "'nan.nii.gz' contains 1 NaN and 0 infinite voxels" in logic.inputProblem(node)
