"""Wrong inputs through the logic API and both commands: refused or warned, never a silent "ok".

Issue 11 (items 7-10) and issue 16 (items 2, 3, 5, 6) on real data: a label map given as the
image, FLAIR and T1c swapped, a head that is not skull-stripped, an empty result, a malformed
model file, one run without a quality score, a progress callback failing at the very end.
Refusals leave the scene and the output folder as they were.
"""

from __future__ import annotations

import json
import shutil

import nibabel
import numpy as np
import pytest
from conftest import DATA_ROOT, REPO_ROOT, hippocampus_paths
from EfficientSegmentationCommon.errors import InputVolumeError, ModelError
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.scene import load_volume
from EfficientSegmentationCommon.segmentation_output import export_segmentation_labels, write_labels_to_segmentation
from MedNCASegmentLib import cli as mednca_cli
from MedNCASegmentLib.logic import QUALITY_ATTRIBUTE, MedNCASegmentLogic
from OSSNetSegmentLib import cli as ossnet_cli
from OSSNetSegmentLib.data import INPUT_FILES, LABELS_FILE
from OSSNetSegmentLib.logic import OSSNetSegmentLogic
from test_input_checks import with_skull

CASE_DIR = DATA_ROOT / "BraTS_sample" / "brats_2013_pat0006_1"
FILES = [CASE_DIR / INPUT_FILES[name] for name in ("FLAIR", "T1c")]
MEDNCA_WEIGHTS = REPO_ROOT / "MedNCASegment" / "Resources" / "Models" / "mednca2d_hippocampus.pt"
OSSNET_WEIGHTS = REPO_ROOT / "OSSNetSegment" / "Resources" / "Models" / "ossnet_brats_wholetumour.pt"


def node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def test_ossnet_refuses_a_label_map_given_as_flair(scene):
    labels, t1c = load_volume(scene, CASE_DIR / LABELS_FILE), load_volume(scene, FILES[1])
    before = node_ids(scene)
    with pytest.raises(InputVolumeError, match=r"The FLAIR volume 'OTMultiClass' looks like a label map, not an "
                                               r"image: it holds only 5 distinct integer values \(0, 1, 2, 3, 4\)"):
        OSSNetSegmentLogic(scene).segment([labels, t1c])
    assert node_ids(scene) == before


def test_mednca_refuses_a_label_file_given_as_the_image(scene):
    labels = load_volume(scene, hippocampus_paths("hippocampus_001")[1], name="labels of 001")
    before = node_ids(scene)
    with pytest.raises(InputVolumeError, match=r"Input volume 'labels of 001' looks like a label map, not an image: "
                                               r"it holds only 3 distinct integer values \(0, 1, 2\). Select a T1 scan"):
        MedNCASegmentLogic(scene).segment(labels, runs=1)
    assert node_ids(scene) == before


def test_ossnet_cli_refuses_swapped_inputs_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert ossnet_cli.main(["--input", str(FILES[1]), str(FILES[0]), "-o", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "FAILED T1c_subtrMeanDivStd: " in printed and "The inputs seem swapped: 'T1c_subtrMeanDivStd' as FLAIR" in printed
    assert "summary: 0 of 1 segmented, 1 failed" in printed
    assert not out.exists() or not any(out.iterdir())


def write_head_case(folder) -> None:
    """The validation case with a skull and scalp put back around the brain (zero air)."""
    folder.mkdir()
    for path in FILES:
        image = nibabel.load(str(path))
        head = with_skull(np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0), noisy_background=False)
        nibabel.save(nibabel.Nifti1Image(head.transpose(2, 1, 0), image.affine), str(folder / path.name))


def small_roi(scene, volume, voxel_kji, size_mm: float = 20.0):
    """A markups ROI box of ``size_mm`` around a voxel (K, J, I) of ``volume``: a fast run."""
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter(*VolumeGeometry.from_volume_node(volume).voxel_to_ras(np.asarray(voxel_kji, float)[::-1]))
    roi.SetSize(size_mm, size_mm, size_mm)
    return roi


def test_ossnet_warns_in_the_result_and_the_cli_when_the_skull_is_left(tmp_path, capsys, scene):
    case = tmp_path / "head"
    write_head_case(case)
    volumes = [load_volume(scene, case / p.name) for p in FILES]
    result = OSSNetSegmentLogic(scene).segment(volumes, roi=small_roi(scene, volumes[0], (77, 120, 120)))
    skull = [w for w in result.warnings if "scalp or skull seem to remain" in w]
    assert [w.split(" has ")[0] for w in skull] == ["The FLAIR volume 'Flair_subtrMeanDivStd'",
                                                    "The T1c volume 'T1c_subtrMeanDivStd'"]
    assert ossnet_cli.main(["--input", str(case), "-o", str(tmp_path / "out"), "--resolution", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert "warning: The FLAIR volume 'Flair_subtrMeanDivStd' has a bright outer layer" in printed


def test_an_empty_result_is_said_so(scene):
    volumes = [load_volume(scene, path) for path in FILES]
    truth = np.asarray(nibabel.load(str(CASE_DIR / LABELS_FILE)).dataobj).transpose(2, 1, 0) > 0
    healthy = np.argwhere(truth).mean(axis=0)
    healthy[2] = truth.shape[2] - 1 - healthy[2]  # the tumour's mirror image across the midline (I axis)
    result = OSSNetSegmentLogic(scene).segment(volumes, roi=small_roi(scene, volumes[0], healthy))
    assert not result.labels.any()
    assert any(w.startswith("The segmentation of 'Flair_subtrMeanDivStd' and 'T1c_subtrMeanDivStd' is empty: "
                              "no whole tumour was found.")
               for w in result.warnings)


def user_model(tmp_path, weights, card_edit=None, weights_bytes=None):
    """A user's model file with its card, from a shipped one, optionally spoiled."""
    path = tmp_path / "mine.pt"
    shutil.copy(weights, path)
    card = json.loads(weights.with_suffix(".json").read_text())
    if card_edit:
        card_edit(card)
    path.with_suffix(".json").write_text(json.dumps(card))
    if weights_bytes is not None:
        path.write_bytes(weights_bytes)
    return path


@pytest.mark.parametrize("content, problem", [(b"", "it is empty"),
                                              (np.random.default_rng(0).bytes(4096), "it is not a Med-NCA model file")],
                         ids=["empty", "random bytes"])
def test_a_broken_model_file_names_the_file(scene, hippocampus, tmp_path, content, problem):
    path = user_model(tmp_path, MEDNCA_WEIGHTS, weights_bytes=content)
    before = node_ids(scene)
    with pytest.raises(ModelError, match=rf"Model file {path} cannot be loaded: {problem}"):
        MedNCASegmentLogic(scene).segment(hippocampus.volume, model=str(path), runs=1)
    assert node_ids(scene) == before


def test_a_card_with_zero_spacing_is_refused_before_segmenting(scene, tmp_path):
    path = user_model(tmp_path, OSSNET_WEIGHTS, card_edit=lambda card: card.update(spacing=[1.0, 1.0, 0.0]))
    volumes = [load_volume(scene, p) for p in FILES]
    with pytest.raises(ModelError, match=rf"The model card in {path.with_suffix('.json')} is malformed: spacing\[2\]"):
        OSSNetSegmentLogic(scene).segment(volumes, model=str(path))


def test_both_commands_keep_the_shipped_models_when_the_user_registry_is_broken(tmp_path, monkeypatch, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "Models.json").write_text('{"models": [{"id": "untitled"}]')
    monkeypatch.setenv("EFFSEG_USER_MODELS", str(user))
    image = hippocampus_paths("hippocampus_001")[0]
    assert mednca_cli.main([str(image), "-o", str(tmp_path / "a"), "--runs", "1"]) == 0
    assert ossnet_cli.main(["--input", *map(str, FILES), "-o", str(tmp_path / "b"), "--resolution", "0.25"]) == 0
    printed = capsys.readouterr()
    assert printed.err.count(f"warning: The model registry {user / 'Models.json'} is not valid JSON") == 2
    assert "quality score NQM: unavailable with 1 run" in printed.out  # and one run says it has no score
    assert "warning: One run gives no quality score" in printed.out


def test_one_run_gives_no_quality_score_and_says_so(scene, hippocampus):
    result = MedNCASegmentLogic(scene).segment(hippocampus.volume, runs=1)
    assert result.quality == {"anterior hippocampus": None, "posterior hippocampus": None}
    assert not result.likely_failure
    assert any(w.startswith("One run gives no quality score") for w in result.warnings)
    assert result.segmentation.GetAttribute(f"{QUALITY_ATTRIBUTE}.anterior hippocampus") is None


def fail_when_done(fraction: float, message: str) -> None:
    if message == "Done":
        raise RuntimeError("the caller's progress display broke")


def test_mednca_fails_with_the_scene_as_it_was_when_the_last_report_raises(scene, hippocampus):
    logic = MedNCASegmentLogic(scene)
    segments = logic.model_entry(None).segments
    existing = write_labels_to_segmentation(scene, hippocampus.labels, hippocampus.geometry, hippocampus.volume,
                                            segments, name="expert")
    labels = export_segmentation_labels(scene, existing, hippocampus.volume, segments)
    before = node_ids(scene)
    with pytest.raises(RuntimeError, match="progress display broke"):
        logic.segment(hippocampus.volume, runs=1, outputSegmentation=existing, uncertaintyVolume=True,
                      progressCallback=fail_when_done)
    assert node_ids(scene) == before
    assert np.array_equal(export_segmentation_labels(scene, existing, hippocampus.volume, segments), labels)


def test_ossnet_fails_with_the_scene_as_it_was_when_the_last_report_raises(scene):
    volumes = [load_volume(scene, path) for path in FILES]
    roi = small_roi(scene, volumes[0], (77, 120, 120))
    before = node_ids(scene)
    with pytest.raises(RuntimeError, match="progress display broke"):
        OSSNetSegmentLogic(scene).segment(volumes, roi=roi, progressCallback=fail_when_done)
    assert node_ids(scene) == before
