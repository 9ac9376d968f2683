"""The issue-11 recipes through both commands and the logic API: each faulty input gives the right
result on the input's own grid, or a named warning or error; outputs never overwrite each other
and the counts printed are true.

One Med-NCA batch (``--runs 1``) and one OSS-Net batch (``--spacing 4``) are run once per module
over all recipes, so the file stays fast; each test checks one recipe's outcome.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import re
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import nibabel
import numpy as np
import pytest
from conftest import DATA_ROOT, hippocampus_paths
from EfficientSegmentationCommon.errors import InputVolumeError
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.registry import ModelRegistry
from EfficientSegmentationCommon.scene import create_scene, load_volume
from EfficientSegmentationCommon.segmentation_output import write_scalar_volume
from EfficientSegmentationCommon.torch_setup import available_devices
from EfficientSegmentationCommon.volume_arrays import array_from_volume
from MedNCASegmentLib import cli as mednca_cli
from MedNCASegmentLib.logic import MedNCASegmentLogic
from MedNCASegmentLib.settings import MedNCASettings
from OSSNetSegmentLib import cli as ossnet_cli

SHIFT_MM = np.array([20.0, -12.0, 7.0])
BRATS_CASE = DATA_ROOT / "BraTS_sample" / "brats_2013_pat0006_1"
FLAIR, T1C = "Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"
# A device string that cannot be used here: CUDA when there is none, else a GPU number too high.
MISSING_DEVICE = "cuda" if available_devices() == ["cpu"] else "cuda:99"


def write(path: Path, array, header, qform, qform_code, sform, sform_code) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nibabel.Nifti1Image(array, None, header.copy())
    image.set_qform(qform, code=qform_code)
    image.set_sform(sform, code=sform_code)
    image.to_filename(str(path))
    return path


@pytest.fixture(scope="module")
def mednca_batch(tmp_path_factory):
    """One ``mednca-segment --runs 1 --format nii.gz`` over the recipes, all named T1w or in
    folders of their own: sub-01 the real case, sub-02 the same with K reversed (left-handed),
    sub-03 with an sform 23.6 mm off the qform (code 2 vs 1), then files that must fail."""
    root = tmp_path_factory.mktemp("mednca")
    source = nibabel.load(str(hippocampus_paths("hippocampus_001")[0]))
    array, header, affine = np.asarray(source.dataobj), source.header, source.affine
    flip = np.diag([1.0, 1.0, -1.0, 1.0])
    flip[2, 3] = array.shape[2] - 1
    shifted = affine.copy()
    shifted[:3, 3] += SHIFT_MM
    files = {
        "plain": write(root / "sub-01" / "anat" / "T1w.nii.gz", array, header, affine, 1, affine, 1),
        "lefthanded": write(root / "sub-02" / "anat" / "T1w.nii.gz", np.ascontiguousarray(array[:, :, ::-1]), header,
                            affine @ flip, 1, affine @ flip, 1),
        "shifted": write(root / "sub-03" / "anat" / "T1w.nii.gz", array, header, affine, 1, shifted, 2),
        "noorient": write(root / "bad" / "noorient.nii.gz", array, header, None, 0, None, 0),
        "truncated": root / "bad" / "t.nii.gz",
        "frames": root / "bad" / "frames.nii.gz",
        "nan": root / "bad" / "nan.nii.gz",
    }
    files["truncated"].write_bytes(hippocampus_paths("hippocampus_001")[0].read_bytes()[:6000])
    nibabel.Nifti1Image(np.stack([array, array], axis=-1), affine).to_filename(str(files["frames"]))
    with_nan = array.astype(np.float32)
    with_nan[1, 2, 3] = np.nan
    nibabel.Nifti1Image(with_nan, affine).to_filename(str(files["nan"]))
    out = root / "out"
    argv = [str(p) for p in files.values()] + [str(files["plain"]), "-o", str(out), "--runs", "1",
                                               "--format", "nii.gz", "--threads", "1"]
    return files, out, argv


@pytest.fixture(scope="module")
def mednca_run(mednca_batch):
    """The batch's exit status, its Python output (stdout, stderr), and what libraries wrote
    straight to the process's file descriptors 1 and 2 (VTK, ITK)."""
    files, out, argv = mednca_batch
    stdout, stderr = io.StringIO(), io.StringIO()
    with tempfile.TemporaryFile() as native:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(native.fileno(), 1)
        os.dup2(native.fileno(), 2)
        try:
            with redirect_stdout(stdout), redirect_stderr(stderr):
                status = mednca_cli.main(argv)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        native.seek(0)
        library_output = native.read().decode(errors="replace")
    return files, out, status, stdout.getvalue(), stderr.getvalue() + library_output


def outcome_line(stdout: str, name: str) -> str:
    """The input's outcome line with the warning lines printed under it."""
    lines = stdout.splitlines()
    (index,) = [i for i, line in enumerate(lines) if re.match(rf"(ok    |CHECK |FAILED) {re.escape(name)}:", line)]
    report = [lines[index]]
    for line in lines[index + 1:]:
        if not line.lstrip().startswith("warning: "):
            break
        report.append(line)
    return "\n".join(report)


def test_same_file_names_in_different_folders_get_distinct_outputs_and_true_counts(mednca_run):
    files, out, status, stdout, _ = mednca_run
    assert sorted(p.name for p in out.iterdir()) == ["sub-01_T1w.nii.gz", "sub-02_T1w.nii.gz", "sub-03_T1w.nii.gz"]
    assert "3 inputs are named 'T1w'; their outputs are named after the folders that differ: " \
           "sub-01_T1w, sub-02_T1w, sub-03_T1w" in stdout
    assert "given more than once; it is segmented once" in stdout
    # One run (for speed) gives no quality score, so each result is to be checked.
    assert "summary: 3 of 7 segmented (3 with warnings: check them), 4 failed" in stdout and status == 1


def test_left_handed_input_gives_the_same_segmentation_on_its_own_grid(mednca_run):
    files, out, _, stdout, _ = mednca_run
    plain = nibabel.load(str(out / "sub-01_T1w.nii.gz"))
    lefthanded = nibabel.load(str(out / "sub-02_T1w.nii.gz"))
    source = nibabel.load(str(files["lefthanded"]))
    assert lefthanded.shape == source.shape and np.allclose(lefthanded.affine, source.affine)
    assert np.linalg.det(lefthanded.affine[:3, :3]) < 0
    plain_labels = np.asarray(plain.dataobj)
    assert plain_labels.max() == 2  # both hippocampus parts found
    assert np.array_equal(np.asarray(lefthanded.dataobj), plain_labels[:, :, ::-1])


def test_disagreeing_sform_places_the_result_with_a_warning_and_agreeing_transforms(mednca_run):
    files, out, _, stdout, _ = mednca_run
    result = nibabel.load(str(out / "sub-03_T1w.nii.gz"))
    source = nibabel.load(str(files["shifted"]))
    assert np.allclose(result.affine, source.affine)  # nibabel's (sform) placement
    assert np.allclose(result.header.get_qform(), result.header.get_sform())
    plain = np.asarray(nibabel.load(str(out / "sub-01_T1w.nii.gz")).dataobj)
    assert np.array_equal(np.asarray(result.dataobj), plain)
    line = outcome_line(stdout, "sub-03_T1w")
    assert f"place the image up to {np.linalg.norm(SHIFT_MM):.1f} mm apart; it was placed by the sform" in line
    assert "'T1w.nii.gz'" in line


@pytest.mark.parametrize("name, message", [
    ("noorient", "'noorient.nii.gz' has no orientation (its qform_code and sform_code are both 0)"),
    ("t", "'t.nii.gz' is damaged: its voxel data cannot be read to the end"),
    ("frames", "'frames.nii.gz' is a 4D image with 2 frames: give a 3D volume"),
    ("nan", "'nan.nii.gz' contains 1 NaN and 0 infinite voxels"),
])
def test_faulty_files_fail_naming_the_file_without_library_noise(mednca_run, name, message):
    _, out, _, stdout, stderr = mednca_run
    assert message in outcome_line(stdout, name)
    assert not any(p.name.startswith(name) for p in out.iterdir())
    assert "vtk" not in (stdout + stderr).lower()


def test_missing_device_is_refused_up_front_saying_what_is_available(mednca_batch, tmp_path, capsys):
    files, _, _ = mednca_batch
    out = tmp_path / "out"
    assert mednca_cli.main([str(files["plain"]), "-o", str(out), "--device", MISSING_DEVICE]) == 2
    assert "Available: cpu" in capsys.readouterr().err
    assert not out.exists()
    logic = MedNCASegmentLogic(create_scene())
    volume = load_volume(logic.scene, files["plain"])
    for device in (MISSING_DEVICE, "gpu" if MISSING_DEVICE == "cuda" else "cuda:7"):
        with pytest.raises(ValueError, match="Available: cpu"):
            logic.segment(volume, runs=1, device=device)


@pytest.mark.parametrize("cli", [mednca_cli, ossnet_cli])
def test_help_says_what_ok_check_and_failed_mean(cli, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    for line in ("ok      segmented, and nothing questions the result", "CHECK   segmented, with warnings",
                 "FAILED  not segmented"):
        assert line in printed


def test_logic_reports_the_file_warning_in_the_result(mednca_batch):
    files, _, _ = mednca_batch
    logic = MedNCASegmentLogic(create_scene())
    volume = load_volume(logic.scene, files["shifted"])
    result = logic.segment(volume, runs=1, refinementSteps=1, globalSteps=1)
    assert any("placed by the sform" in warning for warning in result.warnings)


@pytest.mark.parametrize("shape_kji", [(34, 2, 35), (2, 2, 2), (35, 51, 4)])
def test_volumes_too_thin_for_med_nca_say_the_minimum_size(shape_kji):
    logic = MedNCASegmentLogic(create_scene())
    volume = load_volume(logic.scene, hippocampus_paths("hippocampus_001")[0])
    image, geometry = array_from_volume(volume)
    thin = write_scalar_volume(logic.scene, np.ascontiguousarray(image[tuple(slice(0, n) for n in shape_kji)]),
                               VolumeGeometry(geometry.ijk_to_ras, shape_kji), "thin")
    with pytest.raises(InputVolumeError, match=r"'thin' is .* voxels \(R x A x S\) on the model's 1 x 1 x 1 mm grid; "
                                               r"Med-NCA needs at least 5 voxels along A and R"):
        logic.segment(thin, runs=1)


def test_a_volume_larger_than_the_available_memory_is_refused_up_front(monkeypatch):
    """A whole 1 mm brain in crop mode, on a machine said to have 100 MB free: refused in prepare
    with the estimate and what to do; the scene is as it was; with the memory, it would run, with
    a note that crop mode on a whole brain may give a wrong result (an MSD crop gets none)."""
    from MedNCASegmentLib import input_size

    logic = MedNCASegmentLogic(create_scene())
    volume = load_volume(logic.scene, BRATS_CASE / FLAIR)
    nodes = logic.scene.GetNumberOfNodes()
    monkeypatch.setattr(input_size, "available_memory_bytes", lambda: 100_000_000)
    with pytest.raises(InputVolumeError, match=r"has 8.9 million voxels: segmenting it needs about [\d.]+ [GM]B of memory "
                                               r"and 100 MB is available. Draw an ROI box"):
        logic.prepare(volume, MedNCASettings(runs=1, mode="crop"))
    assert logic.scene.GetNumberOfNodes() == nodes
    monkeypatch.setattr(input_size, "available_memory_bytes", lambda: 2_000_000_000)
    job = logic.prepare(volume, MedNCASettings(runs=1, mode="crop"))
    assert job.image.shape == (155, 240, 240)
    # Crop mode forced on a whole brain runs, but says the result may be wrong and what to use.
    assert any(re.search(r"Crop mode on .*field of view is 240 x 240 x 155 mm.*mode auto or head", note)
               for note in job.warnings), job.warnings
    assert not logic.prepare(load_volume(logic.scene, hippocampus_paths("hippocampus_001")[0]),
                             MedNCASettings(runs=1, mode="crop")).warnings


def test_available_memory_respects_a_container_limit(tmp_path):
    """The memory guard's figure: the system's available memory, capped by a cgroup limit (v2
    ``memory.max``/``memory.current``, or v1 ``limit_in_bytes``/``usage_in_bytes``) where one is set."""
    from EfficientSegmentationCommon import memory

    system = memory.available_memory_bytes()
    assert system is not None and 0 < system <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(1 << 62))  # v1's "no limit"
    (v1 / "memory.usage_in_bytes").write_text("5")
    assert memory._cgroup_room(str(tmp_path / "v1")) is None
    (v1 / "memory.limit_in_bytes").write_text("2000000000\n")
    (v1 / "memory.usage_in_bytes").write_text("500000000\n")
    assert memory._cgroup_room(str(tmp_path / "v1")) == 1_500_000_000
    group = ""
    with open("/proc/self/cgroup") as cgroup:
        group = next((line.strip().split("::", 1)[1] for line in cgroup if line.startswith("0::")), "/")
    v2 = tmp_path / "v2" / group.lstrip("/")
    v2.mkdir(parents=True, exist_ok=True)
    (v2 / "memory.max").write_text("max\n")
    (v2 / "memory.current").write_text("1")
    assert memory._cgroup_room(str(tmp_path / "v2")) is None
    (v2 / "memory.max").write_text("1000000000\n")
    (v2 / "memory.current").write_text("999999999000\n")  # over the limit: no room, not negative
    assert memory._cgroup_room(str(tmp_path / "v2")) == 0


@pytest.fixture(scope="module")
def ossnet_registry():
    weights = Path(ossnet_cli.__file__).resolve().parents[1] / "Resources" / "Models" / "ossnet_brats_wholetumour.pt"
    shipped = ModelRegistry.default()
    return ModelRegistry([dataclasses.replace(e, path=weights) if e.method == "ossnet" else e for e in shipped.entries])


def test_ossnet_case_folders_of_the_same_name_and_one_file_for_two_inputs(tmp_path, capsys, monkeypatch, ossnet_registry):
    """siteA/case1 and siteB/case1 give two outputs; a folder whose one file holds both sequences
    (its name matching both inputs), or one file given twice, is refused instead of feeding that
    file to both inputs (a case folder fails alone in its batch); a missing device is refused
    before anything runs."""
    monkeypatch.setattr(ModelRegistry, "default", classmethod(lambda cls: ossnet_registry))
    for site in ("siteA", "siteB"):
        folder = tmp_path / site / "case1"
        folder.mkdir(parents=True)
        for name in (FLAIR, T1C):
            os.symlink(BRATS_CASE / name, folder / name)
    out = tmp_path / "out"
    argv = ["--input", str(tmp_path / "siteA" / "case1"), str(tmp_path / "siteB" / "case1"),
            "-o", str(out), "--format", "nii.gz", "--spacing", "4", "--threads", "1"]
    assert ossnet_cli.main(argv) == 0
    stdout = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["siteA_case1.nii.gz", "siteB_case1.nii.gz"]
    assert "outputs are named after the folders that differ: siteA_case1, siteB_case1" in stdout
    assert "summary: 2 of 2 segmented, 0 failed" in stdout

    stacked = tmp_path / "siteC" / "case2"
    stacked.mkdir(parents=True)
    flair = nibabel.load(str(BRATS_CASE / FLAIR))
    nibabel.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), flair.affine).to_filename(str(stacked / "flair_t1c.nii.gz"))
    # A bad or missing case folder fails alone; the batch goes on (exit status 1).
    argv = ["--input", str(stacked), str(tmp_path / "nosuch"), str(tmp_path / "siteA" / "case1"),
            "-o", str(tmp_path / "out3"), "--format", "nii.gz", "--spacing", "4", "--threads", "1"]
    assert ossnet_cli.main(argv) == 1
    stdout = capsys.readouterr().out
    assert "FAILED case2: In case folder" in stdout and "'flair_t1c.nii.gz' is the only file for both FLAIR and T1c" in stdout
    assert f"FAILED nosuch: No such case folder '{tmp_path / 'nosuch'}'. Check the path." in stdout
    assert "summary: 1 of 3 segmented, 2 failed" in stdout
    assert sorted(p.name for p in (tmp_path / "out3").iterdir()) == ["case1.nii.gz"]
    # A folder of case folders given as one case: told to give the case folders.
    assert ossnet_cli.main(["--input", str(tmp_path / "siteA"), "-o", str(tmp_path / "out4")]) == 1
    assert f"It holds folders: to segment each as a case, give them all (--input {tmp_path / 'siteA' / '*'})" \
        in capsys.readouterr().out
    # A file that is not a volume among case folders (FOLDER/* matching a notes file) is skipped, with a note.
    (tmp_path / "siteA" / "notes.csv").write_text("case,comment\n")
    argv = ["--input", str(tmp_path / "siteA" / "case1"), str(tmp_path / "siteA" / "notes.csv"),
            "-o", str(tmp_path / "out5"), "--format", "nii.gz", "--spacing", "4", "--threads", "1"]
    assert ossnet_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"note: '{tmp_path / 'siteA' / 'notes.csv'}' is not a case folder nor a volume file; it is skipped." in printed
    assert "summary: 1 of 1 segmented" in printed
    # A volume file among case folders is named in the refusal.
    assert ossnet_cli.main(["--input", str(tmp_path / "siteA" / "case1"), str(BRATS_CASE / FLAIR), "-o", str(tmp_path / "out4")]) == 2
    assert f"not both (files given among folders: {BRATS_CASE / FLAIR})" in capsys.readouterr().err
    assert ossnet_cli.main(["--input", str(BRATS_CASE / FLAIR), str(BRATS_CASE / FLAIR), "-o", str(tmp_path / "out2")]) == 2
    assert "given for both FLAIR and T1c" in capsys.readouterr().err
    assert ossnet_cli.main(["--input", str(BRATS_CASE), "-o", str(tmp_path / "out2"), "--device", MISSING_DEVICE]) == 2
    assert "Available: cpu" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_no_output_overwrites_an_input(tmp_path, capsys, monkeypatch, ossnet_registry):
    """``-o`` the inputs' own folder with ``--format nii.gz`` would write each result over its
    input: both commands refuse that input (FAILED, the file untouched) and go on; ``--volumes``
    must name a .csv file, so it cannot overwrite a scan; a failed row in it says why."""
    import csv
    import hashlib
    import shutil

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    image = tmp_path / "good.nii.gz"
    shutil.copy(hippocampus_paths("hippocampus_001")[0], image)
    before = digest(image)
    monkeypatch.chdir(tmp_path)
    table = tmp_path / "v.csv"
    status = mednca_cli.main(["good.nii.gz", "-o", ".", "--format", "nii.gz", "--runs", "2", "--threads", "1",
                              "--volumes", str(table)])
    captured = capsys.readouterr()
    printed = captured.out
    assert status == 1 and digest(image) == before
    assert "FAILED good: The result would be written over the input file 'good.nii.gz'" in printed
    assert "good [" not in captured.err  # refused before it was segmented (no progress bar)
    # A label map beside an input of the same name (h.nii): Slicer would read the input for it.
    import gzip

    (tmp_path / "h.nii").write_bytes(gzip.decompress(image.read_bytes()))
    status = mednca_cli.main(["h.nii", "-o", ".", "--format", "nii.gz", "--runs", "2", "--threads", "1"])
    assert status == 1 and not (tmp_path / "h.nii.gz").exists()
    assert "FAILED h: The result 'h.nii.gz' would lie beside 'h.nii'" in capsys.readouterr().out
    (row,) = list(csv.DictReader(table.open()))
    assert row["status"] == "failed" and row["warnings"].startswith("The result would be written over")
    for volumes, problem in (("good.nii.gz", "is not a .csv file name"), (str(tmp_path), "is a folder")):
        with pytest.raises(SystemExit) as refused:
            mednca_cli.main(["good.nii.gz", "-o", "out", "--volumes", volumes])
        assert refused.value.code == 2 and problem in capsys.readouterr().err
    assert digest(image) == before and not (tmp_path / "out").exists()

    monkeypatch.setattr(ModelRegistry, "default", classmethod(lambda cls: ossnet_registry))
    for name in (FLAIR, T1C):
        shutil.copy(BRATS_CASE / name, tmp_path / name)
    flair_before = digest(tmp_path / FLAIR)
    status = ossnet_cli.main(["--input", FLAIR, T1C, "-o", ".", "--format", "nii.gz", "--spacing", "4",
                              "--threads", "1"])
    assert status == 1 and digest(tmp_path / FLAIR) == flair_before
    assert f"The result would be written over the input file '{FLAIR}'" in capsys.readouterr().out


def test_a_rerun_over_its_own_results_segments_the_scans_again(tmp_path, capsys, monkeypatch, ossnet_registry):
    """``mednca-segment scans/* -o scans`` run twice: the second run meets the first's
    ``.seg.nrrd`` results among its inputs and skips them with a note, instead of failing them
    as label maps (a fresh-user trial had 0 of 6 segmented); a case folder holding an earlier
    result beside its FLAIR still has one FLAIR. The ``--volumes`` table among the inputs is
    skipped like the others and written anew; so is the output folder among them."""
    import csv
    import shutil

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(hippocampus_paths("hippocampus_001")[0], scans / "a.nii.gz")
    command = ["-o", str(scans), "--runs", "2", "--threads", "1"]
    assert mednca_cli.main([str(scans / "a.nii.gz"), *command, "--volumes", str(scans / "v.csv")]) == 0
    capsys.readouterr()
    assert mednca_cli.main([str(p) for p in sorted(scans.iterdir())] + command) == 0
    printed = capsys.readouterr().out
    assert f"note: '{scans / 'a.seg.nrrd'}' is a segmentation (a result), not a scan; it is skipped." in printed
    assert f"note: '{scans / 'v.csv'}' is a table, not a scan; it is skipped." in printed
    assert f"note: replaced the earlier file {scans / 'a.seg.nrrd'}" in printed
    assert "summary: 1 of 1 segmented" in printed

    table = scans / "volumes.csv"
    table.write_text("input,status\n")
    (scans / "out").mkdir()
    assert mednca_cli.main([str(scans / "a.nii.gz"), str(table), str(scans / "out"), "-o", str(scans / "out"),
                            "--runs", "2", "--threads", "1", "--volumes", str(table)]) == 0
    printed = capsys.readouterr().out
    assert f"note: '{table}' is a table, not a scan; it is skipped." in printed
    assert f"note: '{scans / 'out'}' is the output folder (-o), not an input; it is skipped." in printed
    assert [row["status"] for row in csv.DictReader(table.open())] == ["ok"]
    assert mednca_cli.main([str(table), *command, "--volumes", str(table)]) == 2  # nothing else: refused
    assert "nothing to segment: " in capsys.readouterr().err

    monkeypatch.setattr(ModelRegistry, "default", classmethod(lambda cls: ossnet_registry))
    case = tmp_path / "case"
    case.mkdir()
    for name in (FLAIR, T1C):
        shutil.copy(BRATS_CASE / name, case / name)
    settings = ["-o", str(case), "--spacing", "4", "--threads", "1"]
    assert ossnet_cli.main(["--input", str(case / FLAIR), str(case / T1C), *settings]) == 0  # named after the FLAIR
    assert (case / FLAIR.replace(".nii.gz", ".seg.nrrd")).is_file()
    assert ossnet_cli.main(["--input", str(case), *settings]) == 0
    assert "summary: 1 of 1 segmented" in capsys.readouterr().out
    (case / "out").mkdir()  # a case folder and the output folder beside it (cases/* with -o cases/out)
    assert ossnet_cli.main(["--input", str(case), str(case / "out"), "-o", str(case / "out"), "--spacing", "4",
                            "--threads", "1"]) == 0
    assert f"note: '{case / 'out'}' is the output folder (-o), not an input; it is skipped." in capsys.readouterr().out
    # The output folder that holds a case is segmented, among others too.
    assert ossnet_cli.main(["--input", str(case), str(case / "out"), "-o", str(case), "--spacing", "4",
                            "--threads", "1"]) == 1  # out holds no case: it fails, named
    printed = capsys.readouterr().out
    assert "is the output folder" not in printed and "summary: 1 of 2 segmented, 1 failed" in printed
    # Another case's files of the same names into the same folder: the earlier result is replaced, and said so.
    assert ossnet_cli.main(["--input", str(case / FLAIR), str(case / T1C), *settings]) == 0
    assert f"note: replaced the earlier file {case / FLAIR.replace('.nii.gz', '.seg.nrrd')}" in capsys.readouterr().out


def test_ctrl_c_stops_the_batch_saying_what_was_done(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the second of three inputs: the first result is kept, the summary says what
    was segmented, interrupted and not started, the ``--volumes`` table has the rows so far, exit
    status 130, no traceback and no partial file."""
    import csv
    import shutil

    for name in ("a", "b", "c"):
        shutil.copy(hippocampus_paths("hippocampus_001")[0], tmp_path / f"{name}.nii.gz")
    segment = MedNCASegmentLogic.segment

    def stopped_at_b(self, volume, *args, **kwargs):
        if volume.GetName() == "b":
            raise KeyboardInterrupt
        return segment(self, volume, *args, **kwargs)

    monkeypatch.setattr(MedNCASegmentLogic, "segment", stopped_at_b)
    out, table = tmp_path / "out", tmp_path / "v.csv"
    status = mednca_cli.main([str(tmp_path / f"{n}.nii.gz") for n in "abc"]
                             + ["-o", str(out), "--runs", "2", "--threads", "1", "--volumes", str(table)])
    printed = capsys.readouterr().out
    assert status == 130
    assert "STOPPED b: interrupted (Ctrl-C); nothing was written for it" in printed
    assert "summary: interrupted; 1 of 3 segmented, 0 failed, 1 interrupted, 1 not started" in printed
    assert sorted(p.name for p in out.iterdir()) == ["a.seg.nrrd"]
    rows = list(csv.DictReader(table.open()))
    assert [(Path(r["input"]).name, r["status"], r["warnings"]) for r in rows] == [
        ("a.nii.gz", "ok", ""), ("b.nii.gz", "interrupted", "interrupted (Ctrl-C)")]
    # Again, over the table of that run: the earlier table is kept, not replaced by a partial one.
    before = table.read_text()
    status = mednca_cli.main([str(tmp_path / f"{n}.nii.gz") for n in "bac"]
                             + ["-o", str(out), "--runs", "2", "--threads", "1", "--volumes", str(table)])
    assert status == 130 and table.read_text() == before
    assert f"volumes: not written (interrupted); the earlier table {table} is as it was" in capsys.readouterr().out


def test_a_result_that_fails_while_written_leaves_no_file(tmp_path, monkeypatch):
    """The result is written beside its path and renamed: a write that fails (or is stopped)
    leaves neither a truncated result nor the partial file, and an earlier result stays whole."""
    from EfficientSegmentationCommon import batch

    path = tmp_path / "case.nii.gz"
    path.write_bytes(b"earlier result")

    def failing_write(labels, geometry, target, reference=None):  # as input_files.save_labels_nifti fails
        Path(target).write_bytes(b"half")
        raise OSError(f"Could not write label map to '{target}'") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch, "write_labels", failing_write)
    result = dataclasses.make_dataclass("Result", ["labels", "geometry", "segmentation"])(None, None, None)
    with pytest.raises(OSError, match=f"The result could not be written to '{path}': No space left on device. "
                                      "Check that the output folder"):
        batch.write_result(result, path)
    assert [p.name for p in tmp_path.iterdir()] == ["case.nii.gz"] and path.read_bytes() == b"earlier result"
    # a folder in the result's way (a fresh-user trial: the message named the hidden partial file)
    monkeypatch.undo()
    blocked = tmp_path / "blocked.nii.gz"
    blocked.mkdir()
    labels = np.zeros((2, 3, 4), np.uint8)
    result = dataclasses.make_dataclass("Result", ["labels", "geometry", "segmentation"])(
        labels, VolumeGeometry.compose(labels.shape, (1.0, 1.0, 1.0)), None)
    with pytest.raises(OSError, match=f"The result could not be written to '{blocked}': Is a directory"):
        batch.write_result(result, blocked)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked.nii.gz", "case.nii.gz"]


def test_small_message_fixes(tmp_path, capsys):
    """A folder given with a trailing slash keeps its name in the report; OSS-Net's model
    message has the right article."""
    from EfficientSegmentationCommon.scene import name_from_path

    assert name_from_path(str(tmp_path) + os.sep) == tmp_path.name
    assert ossnet_cli.main(["--input", str(BRATS_CASE), "-o", str(tmp_path / "o"), "--model",
                            "mednca2d-hippocampus"]) == 2
    assert "is not an OSS-Net model; OSS-Net models:" in capsys.readouterr().err
