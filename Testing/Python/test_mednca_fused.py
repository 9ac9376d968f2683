"""The fast Med-NCA inference path: the same arithmetic as the training-time cells, whatever the tiling.

The fused cell folds perception and the first layer into one convolution and batches all runs
of a slice; these tests hold it to the reference (:meth:`MedNCA.forward`, one (slice, run) pair
at a time, with the same fire masks) on a real validation case, and check that bounding the
memory (small tiles) never changes the result. No timings here: speed is in
Testing/Benchmarks/mednca_benchmark.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedNCASegmentLib.data import load_case, read_split
from MedNCASegmentLib.fused_cell import FusedCell
from MedNCASegmentLib.inference import _generator, decode_labels, segment
from MedNCASegmentLib.model_io import load_model
from MedNCASegmentLib.preprocessing import normalize_intensity, pad_to_multiple

from conftest import HIPPOCAMPUS, REPO_ROOT

MODELS = REPO_ROOT / "MedNCASegment" / "Resources" / "Models"


@pytest.fixture(scope="module")
def model():
    return load_model(MODELS / "mednca2d_hippocampus.pt")[0]


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """Seven central slices of a validation case (never seen in training), normalised."""
    case = load_case(HIPPOCAMPUS, read_split(MODELS / "hippocampus_split.json")["validation"][0])
    middle = case.image.shape[0] // 2
    return normalize_intensity(case.image[middle - 3: middle + 4])


def test_folded_cell_equals_the_training_cell(model) -> None:
    """Perception + fc0 folded into one convolution: one step agrees with NCACell.forward."""
    torch.manual_seed(0)
    state = torch.randn(3, model.config.channels, 20, 16)
    for cell in (model.global_cell, model.refinement_cell):
        generator = torch.Generator().manual_seed(5)
        expected = cell(state, generator)
        fire = (torch.rand((3, 1, 20, 16), generator=torch.Generator().manual_seed(5)) < cell.fire_rate).float()
        fused = state.clone().contiguous(memory_format=torch.channels_last)
        FusedCell(cell, torch.float32).step(fused, fire)
        torch.testing.assert_close(fused, expected, atol=1e-4, rtol=1e-5)


def reference(model, volume: np.ndarray, runs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over runs, each (slice, run) pair through MedNCA.forward with its own generator
    and its own input (mirrored for odd runs), as the fused path draws them."""
    padded, crop = pad_to_multiple(volume, model.config.downscale, axes=(1, 2))
    depth = volume.shape[0]
    outputs = np.zeros((runs, model.config.num_classes, *padded.shape))
    for d in range(depth):
        neighbours = np.clip([d - 1, d, d + 1], 0, depth - 1)
        image = torch.from_numpy(np.ascontiguousarray(padded[neighbours]))[None]
        for r in range(runs):
            source = image.flip(-1) if r % 2 else image
            with torch.no_grad():
                logits = model(source, generator=_generator(seed, d, r))
            probabilities = torch.sigmoid(logits.flip(-1) if r % 2 else logits)[0]
            outputs[r, :, d] = probabilities.double().numpy()
    cropped = outputs[(slice(None), slice(None), *crop)]
    return cropped.mean(axis=0), cropped.std(axis=0)


def test_batched_fused_path_gives_the_reference_probabilities(model, volume) -> None:
    result = segment(model, volume, runs=3, seed=4, normalized=True, precision="float32")
    mean, std = reference(model, volume, runs=3, seed=4)
    np.testing.assert_allclose(result.mean, mean, atol=2e-4)
    np.testing.assert_allclose(result.std, std, atol=2e-4)
    assert (decode_labels(result.mean) > 0).any()
    layers = segment(model, volume, runs=3, seed=4, normalized=True, fused=False)
    np.testing.assert_allclose(layers.mean, mean, atol=2e-4)


@pytest.mark.parametrize("precision", ["float32", "auto"])
def test_small_tiles_give_the_same_result(model, volume, precision: str) -> None:
    """Bounding the working memory (one (slice, run) pair per tile) changes nothing."""
    whole = segment(model, volume, runs=4, seed=1, normalized=True, precision=precision)
    tiled = segment(model, volume, runs=4, seed=1, normalized=True, precision=precision, tile_pixels=1)
    np.testing.assert_allclose(tiled.mean, whole.mean, atol=1e-6)
    np.testing.assert_allclose(tiled.std, whole.std, atol=1e-6)


def test_seed_reproducible_and_runs_differ(model, volume) -> None:
    first = segment(model, volume, runs=2, seed=7, normalized=True)
    again = segment(model, volume, runs=2, seed=7, normalized=True)
    other = segment(model, volume, runs=2, seed=8, normalized=True)
    np.testing.assert_array_equal(first.mean, again.mean)
    assert not np.array_equal(first.mean, other.mean)
    assert first.std.max() > 0


def test_preview_sees_the_labels_grow_and_ends_with_the_result(model, volume) -> None:
    shown: list[np.ndarray] = []
    result = segment(model, volume, runs=2, seed=0, normalized=True, preview=shown.append, preview_every=8,
                     tile_pixels=1)
    assert len(shown) > 2 and all(labels.shape == volume.shape and labels.dtype == np.uint8 for labels in shown)
    np.testing.assert_array_equal(shown[-1], decode_labels(result.mean))


def test_unknown_precision_is_refused(model, volume) -> None:
    with pytest.raises(ValueError, match="precision"):
        segment(model, volume, runs=1, precision="int4")


def test_decoded_labels_are_unchanged_by_the_leaner_decoding() -> None:
    rng = np.random.default_rng(0)
    mean = rng.random((2, 5, 6, 7)).astype(np.float32) * 0.6
    expected = np.where(mean.sum(axis=0) > 0.5, mean.argmax(axis=0) + 1, 0).astype(np.uint8)
    np.testing.assert_array_equal(decode_labels(mean), expected)


def test_freed_memory_goes_back_to_the_system_on_glibc() -> None:
    import platform

    from EfficientSegmentationCommon.memory import release_free_memory

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert release_free_memory() is expected
