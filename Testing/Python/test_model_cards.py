"""Malformed model files, cards and user registries: a message naming the file and the field.

A user's own model (``model=<file>``) and the user's ``Models.json`` are written by hand; every
fault must say where it is, and a fault in the user's registry must not stop the shipped models.
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import REPO_ROOT
from EfficientSegmentationCommon.errors import ModelError
from EfficientSegmentationCommon.registry import ModelRegistry

MEDNCA_WEIGHTS = REPO_ROOT / "MedNCASegment" / "Resources" / "Models" / "mednca2d_hippocampus.pt"
SHIPPED_IDS = ["mednca2d-hippocampus", "ossnet-brats-wholetumour"]


@pytest.fixture
def user_model(tmp_path):
    """A copy of the shipped Med-NCA weights and card in a user folder: (weights, card, card dict)."""
    weights = tmp_path / "my_model.pt"
    shutil.copy(MEDNCA_WEIGHTS, weights)
    card = tmp_path / "my_model.json"
    shutil.copy(MEDNCA_WEIGHTS.with_suffix(".json"), card)
    return weights, card, json.loads(card.read_text())


def entry_for(weights):
    return ModelRegistry.default().entry_for_file(weights, method="mednca")


def test_a_good_card_describes_the_model(user_model):
    weights, _, values = user_model
    entry = entry_for(weights)
    assert (entry.id, entry.path, [s.name for s in entry.segments]) == ("my_model", weights.resolve(),
                                                                         ["anterior hippocampus", "posterior hippocampus"])
    assert entry.quality_warning_threshold == values["quality_warning_threshold"]
    assert entry.structure_spread_warning_threshold == values["structure_spread_warning_threshold"]
    assert entry.max_spacing_mm == values["max_spacing_mm"]
    assert entry.orientation == values["orientation"] == "RAS"


def test_a_model_file_keeps_its_training_voxel_order(tmp_path):
    """OSS-Net's weights given as a file (as after retraining) read inputs LPS, like the shipped entry."""
    ossnet = REPO_ROOT / "OSSNetSegment" / "Resources" / "Models" / "ossnet_brats_wholetumour.pt"
    weights = tmp_path / "retrained.pt"
    shutil.copy(ossnet, weights)
    shutil.copy(ossnet.with_suffix(".json"), weights.with_suffix(".json"))
    entry = ModelRegistry.default().entry_for_file(weights, method="ossnet")
    assert entry.orientation == "LPS" == ModelRegistry.default().get("ossnet-brats-wholetumour").orientation
    # A card written before cards recorded it: the BraTS files' order, which OSS-Net's training reads.
    card = json.loads(weights.with_suffix(".json").read_text())
    del card["orientation"]
    weights.with_suffix(".json").write_text(json.dumps(card))
    assert ModelRegistry.default().entry_for_file(weights, method="ossnet").orientation == "LPS"


@pytest.mark.parametrize("edit, field", [
    (lambda card: card["segments"][1].pop("color"), r"segments\[1\]\.color: missing"),
    (lambda card: card.update(spacing=[1.0, 0.0, 1.0]), r"spacing\[1\]: 0\.0 is less than or equal to the minimum of 0"),
    (lambda card: card.update(spacing=[-1.0, 1.0, 1.0]), r"spacing\[0\]: -1\.0 is less than or equal to the minimum of 0"),
    (lambda card: card["segments"][0].update(color=[0.9, 0.2]), r"segments\[0\]\.color: \[0\.9, 0\.2\] is too short"),
    (lambda card: card.pop("segments"), "segments: missing"),
    (lambda card: card.update(quality_warning_threshold=-1), "quality_warning_threshold: -1 is less than or equal"),
    (lambda card: card.update(orientation="ASR"), "orientation: 'ASR' does not match"),
    (lambda card: card.update(max_spacing_mm=0), "max_spacing_mm: 0 is less than or equal to the minimum of 0"),
    (lambda card: card.update(max_spacing_mm={"t1": 3}), r"max_spacing_mm: 't1' is not one of the inputs \(T1\)"),
], ids=["segment without colour", "zero spacing", "negative spacing", "two-number colour", "no segments",
        "negative threshold", "orientation out of order", "zero coarsest spacing", "coarsest spacing of no input"])
def test_a_malformed_card_names_the_file_and_the_field(user_model, edit, field):
    weights, card, values = user_model
    edit(values)
    card.write_text(json.dumps(values))
    with pytest.raises(ModelError, match=rf"The model card in {card} is malformed: {field}"):
        entry_for(weights)


@pytest.mark.parametrize("text, problem", [("", "is empty"), ("{\"segments\": [", "is not valid JSON: Expecting value at "
                                                                                 "line 1, column 15")])
def test_an_unreadable_card_names_the_file(user_model, text, problem):
    weights, card, _ = user_model
    card.write_text(text)
    with pytest.raises(ModelError, match=rf"The model card {card} {problem}"):
        entry_for(weights)


def test_a_model_file_without_a_card_says_what_to_add(user_model):
    weights, card, _ = user_model
    card.unlink()
    with pytest.raises(ModelError, match=rf"Model file {weights} has no registry entry and no model card \(my_model.json\)"):
        entry_for(weights)


def write_user_registry(folder, text: str, monkeypatch):
    folder.mkdir(exist_ok=True)
    (folder / "Models.json").write_text(text)
    monkeypatch.setenv("EFFSEG_USER_MODELS", str(folder))
    return folder / "Models.json"


@pytest.mark.parametrize("text, problem", [
    ("{\"models\": [", "is not valid JSON"), ("", "is empty"), ("[]", "is malformed: models: missing")],
    ids=["invalid JSON", "empty", "no models list"])
def test_a_broken_user_registry_is_skipped_and_the_shipped_models_stay(tmp_path, monkeypatch, text, problem):
    path = write_user_registry(tmp_path / "user", text, monkeypatch)
    registry = ModelRegistry.default()
    assert [entry.id for entry in registry.entries] == SHIPPED_IDS
    assert len(registry.warnings) == 1
    assert registry.warnings[0].startswith(f"The model registry {path} {problem}")
    assert registry.warnings[0].endswith("Its models are skipped; the shipped models are still available.")


def test_a_bad_user_entry_is_skipped_and_the_good_ones_kept(tmp_path, monkeypatch, user_model):
    weights, _, card = user_model
    good = {"id": "my-model", "title": "Mine", "method": "mednca", "task": "hippocampus", "inputs": ["T1"],
            "segments": card["segments"], "file": str(weights)}
    untitled = {key: value for key, value in good.items() if key != "title"} | {"id": "untitled"}
    path = write_user_registry(tmp_path / "user", json.dumps({"models": [untitled, good]}), monkeypatch)
    registry = ModelRegistry.default()
    assert [entry.id for entry in registry.entries] == [*SHIPPED_IDS, "my-model"]
    assert registry.warnings == [f"Model 'untitled' in {path} is malformed: title: missing. Correct the file (the "
                                 "fields are described in Resources/Models.schema.json). It is skipped."]


def test_a_user_entry_may_not_replace_a_shipped_model(tmp_path, monkeypatch, user_model):
    weights, _, card = user_model
    clash = {"id": SHIPPED_IDS[0], "title": "Mine", "method": "mednca", "task": "hippocampus", "inputs": ["T1"],
             "segments": card["segments"], "file": str(weights)}
    write_user_registry(tmp_path / "user", json.dumps({"models": [clash]}), monkeypatch)
    registry = ModelRegistry.default()
    assert [entry.path for entry in registry.entries if entry.id == SHIPPED_IDS[0]][0].name == MEDNCA_WEIGHTS.name
    assert "repeats the id of a model already registered" in registry.warnings[0]


def test_a_fault_in_the_shipped_registry_is_raised(tmp_path):
    shipped = json.loads((REPO_ROOT / "Resources" / "Models.json").read_text())
    del shipped["models"][1]["segments"][0]["color"]
    path = tmp_path / "Models.json"
    path.write_text(json.dumps(shipped))
    with pytest.raises(ModelError, match=rf"Model 'ossnet-brats-wholetumour' in {path} is malformed: "
                                         r"segments\[0\]\.color: missing"):
        ModelRegistry.from_files([path])


def test_without_jsonschema_the_fields_the_code_needs_are_still_checked(user_model, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "jsonschema", None)  # as inside Slicer, which does not bundle it
    weights, card, values = user_model
    values["segments"][1].pop("color")
    values["spacing"] = [1.0, 0.0, 1.0]
    values["orientation"] = "XYZ"
    card.write_text(json.dumps(values))
    with pytest.raises(ModelError, match=rf"The model card in {card} is malformed: segments\[1\]\.color: missing; "
                                         r"spacing: must be three numbers above 0 \(mm\); orientation: 'XYZ' must "
                                         r"be R or L, A or P, S or I"):
        entry_for(weights)
    for limit in ({"T1": "x"}, "5", {}, {"T1": 0}):  # TypeErrors, a 0 mm limit or none at all before
        values = json.loads(MEDNCA_WEIGHTS.with_suffix(".json").read_text())
        values["max_spacing_mm"] = limit
        card.write_text(json.dumps(values))
        with pytest.raises(ModelError, match=r"max_spacing_mm: must be a number above 0 \(mm\) or an object"):
            entry_for(weights)
