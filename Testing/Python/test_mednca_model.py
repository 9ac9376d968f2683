"""Med-NCA model: the automaton's invariants, seeded determinism, and the shipped weights on real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from EfficientSegmentationCommon.metrics import dice
from MedNCASegmentLib.data import Case, load_case, read_split
from MedNCASegmentLib.inference import segment
from MedNCASegmentLib.model_io import load_model
from MedNCASegmentLib.nca import MedNCA, MedNCAConfig, default_config

from conftest import HIPPOCAMPUS, REPO_ROOT

MODELS = REPO_ROOT / "MedNCASegment" / "Resources" / "Models"
WEIGHTS = MODELS / "mednca2d_hippocampus.pt"


@pytest.fixture(scope="module")
def shipped():
    model, _ = load_model(WEIGHTS)
    card = json.loads(WEIGHTS.with_suffix(".json").read_text())
    return model, card


@pytest.fixture(scope="module")
def hippocampus_case() -> Case:
    """A validation case: never seen in training."""
    return load_case(HIPPOCAMPUS, read_split(MODELS / "hippocampus_split.json")["validation"][0])


@pytest.mark.parametrize("dims", [2, 3])
def test_output_shape_and_parameter_budget(dims: int) -> None:
    config = default_config(dims)
    model = MedNCA(config)
    spatial = (16, 12) if dims == 2 else (16, 32, 16)  # 3D: downscaled sides >= 4 for the 7^3 kernel
    image = torch.rand(3 if dims == 2 else 1, config.input_channels, *spatial)
    logits = model(image, global_steps=2, refinement_steps=2)
    assert logits.shape == (image.shape[0], config.num_classes, *spatial)
    assert model.parameter_count <= 100_000


@pytest.mark.parametrize("dims", [2, 3])
def test_untrained_automaton_is_the_identity(dims: int) -> None:
    config = default_config(dims)
    model = MedNCA(config).eval()
    state = torch.rand(2, config.channels, *((8, 8) if dims == 2 else (8, 8, 8)))
    for cell in (model.global_cell, model.refinement_cell):
        assert torch.equal(cell(state), state)


def test_steps_never_change_the_input_channels() -> None:
    config = MedNCAConfig(channels=8, hidden=16, input_channels=3)
    model = MedNCA(config)
    torch.nn.init.normal_(model.refinement_cell.fc1.weight)  # a non-trivial update
    state = torch.rand(2, 8, 12, 12)
    after = model.refinement_cell(model.refinement_cell(state))
    assert torch.equal(after[:, :3], state[:, :3])
    assert not torch.equal(after[:, 3:], state[:, 3:])


def test_fire_rate_updates_about_half_the_cells() -> None:
    config = MedNCAConfig(channels=8, hidden=16, input_channels=1, fire_rate=0.5)
    cell = MedNCA(config).refinement_cell
    torch.nn.init.constant_(cell.fc1.weight, 1.0)
    state = torch.rand(1, 8, 64, 64)
    changed = (cell(state, torch.Generator().manual_seed(0)) != state)[:, 1:].any(dim=1).float().mean()
    assert 0.45 < float(changed) < 0.55


def test_rejects_sizes_not_divisible_by_the_downscale_factor() -> None:
    model = MedNCA(default_config(2))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.rand(1, 3, 10, 12))


def test_seeded_inference_is_reproducible(shipped, hippocampus_case) -> None:
    model, _ = shipped
    first = segment(model, hippocampus_case.image, runs=2, seed=7)
    second = segment(model, hippocampus_case.image, runs=2, seed=7)
    other = segment(model, hippocampus_case.image, runs=2, seed=8)
    np.testing.assert_array_equal(first.mean, second.mean)
    assert not np.array_equal(first.mean, other.mean)
    assert first.std.max() > 0  # stochastic runs differ: the spread is the uncertainty


def test_two_stage_pipeline_on_a_real_volume(shipped, hippocampus_case) -> None:
    model, _ = shipped
    progress: list[float] = []
    result = segment(model, hippocampus_case.image, runs=2, progress=lambda f, m: progress.append(f))
    assert result.mean.shape == (2, *hippocampus_case.image.shape)
    labels = result.labels()
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert (labels == 1).any() and (labels == 2).any()
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    assert np.all(result.quality >= 0)


def test_shipped_weights_reach_the_model_card_dice(shipped) -> None:
    """A few validation cases, as the card evaluated them (same runs and seed), within 0.02."""
    model, card = shipped
    assert card["parameters"] == model.parameter_count <= 100_000
    assert WEIGHTS.stat().st_size < 1_000_000
    rows = {row["case"]: row for row in card["per_case"]}
    split = read_split(MODELS / "hippocampus_split.json")
    cases = split["validation"][:3]
    measured, stated = [], []
    for case_id in cases:
        case = load_case(HIPPOCAMPUS, case_id)
        labels = segment(model, case.image, runs=card["evaluation"]["runs"], seed=card["evaluation"]["seed"]).labels()
        measured.append(dice(labels > 0, case.labels > 0))
        stated.append(rows[case_id]["dice_foreground"])
    assert abs(np.mean(measured) - np.mean(stated)) <= 0.02


def test_a_card_written_with_the_old_stage_names_still_loads() -> None:
    """Cards and weight files written before the stages were named global/refinement say coarse/fine."""
    from MedNCASegmentLib.nca import upgrade_state_dict

    config = MedNCAConfig.from_dict({"coarse_steps": 7, "fine_steps": 5, "coarse_kernel": 3, "fine_kernel": 3})
    assert (config.global_steps, config.refinement_steps) == (7, 5)
    model = MedNCA(config)
    old = {key.replace("global_cell.", "coarse.").replace("refinement_cell.", "fine."): value
           for key, value in model.state_dict().items()}
    MedNCA(config).load_state_dict(upgrade_state_dict(old))


def _randomised(config: MedNCAConfig, seed: int) -> MedNCA:
    """A model with random weights everywhere (an untrained one is zero in its output layers)."""
    torch.manual_seed(seed)
    model = MedNCA(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter))
    return model


def test_weight_interpolation_lies_on_the_line_between_two_models(tmp_path) -> None:
    from MedNCASegmentLib.model_io import save_model
    from MedNCASegmentLib.weight_interpolation import interpolate, main

    config = default_config(2)
    start, end = _randomised(config, 1), _randomised(config, 2)
    save_model(tmp_path / "start.pt", start, {"seed": 1})
    save_model(tmp_path / "end.pt", end, {"seed": 2, "command": "python -m MedNCASegmentLib.training --seed 2"})
    for alpha, expected in ((0.0, start), (1.0, end)):
        model, _ = interpolate(tmp_path / "start.pt", tmp_path / "end.pt", alpha)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(value, expected.state_dict()[name])
    assert main([str(tmp_path / "start.pt"), str(tmp_path / "end.pt"), "--alpha", "0.25",
                 "--output", str(tmp_path / "quarter.pt")]) == 0
    quarter, metadata = load_model(tmp_path / "quarter.pt")
    name = next(iter(start.state_dict()))
    torch.testing.assert_close(quarter.state_dict()[name],
                               0.75 * start.state_dict()[name] + 0.25 * end.state_dict()[name])
    assert metadata["interpolation"]["alpha"] == 0.25 and metadata["end"]["seed"] == 2 and metadata["seed"] == 2
    assert metadata["command"].startswith("python -m MedNCASegmentLib.training --seed 2 && "
                                          "python -m MedNCASegmentLib.weight_interpolation ")


def test_weight_interpolation_refuses_what_has_no_line(tmp_path) -> None:
    from dataclasses import replace

    from MedNCASegmentLib.model_io import save_model
    from MedNCASegmentLib.weight_interpolation import interpolate

    save_model(tmp_path / "a.pt", _randomised(default_config(2), 1), {})
    save_model(tmp_path / "b.pt", _randomised(replace(default_config(2), hidden=64), 2), {})
    with pytest.raises(ValueError, match="different configurations"):
        interpolate(tmp_path / "a.pt", tmp_path / "b.pt", 0.5)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        interpolate(tmp_path / "a.pt", tmp_path / "a.pt", 1.5)
