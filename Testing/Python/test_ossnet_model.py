"""OSS-Net model: shapes, coarse-to-fine selection, chunking, resolution independence, determinism.

Fast: a small model (random weights, calibrated so that it draws a border inside the crop) on
a 56x64x64 crop of a real BraTS case around its tumour. Tests that need trained weights are in
test_ossnet_weights.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from EfficientSegmentationCommon.errors import CancelledError
from EfficientSegmentationCommon.geometry import VolumeGeometry
from OSSNetSegmentLib.data import load_case
from OSSNetSegmentLib.inference import level_strides, output_grid, segment
from OSSNetSegmentLib.model_io import load_model, save_model
from OSSNetSegmentLib.network import OSSNet, OSSNetConfig, default_config
from OSSNetSegmentLib.preprocessing import (BACKGROUND, Transform, VolumeSampler, centred_positions,
                                            encoder_grid_shape, normalize_channel, normalize_images,
                                            resample_centred)
from OSSNetSegmentLib.training import Trainer, TrainingSettings, TrainingVolume

from conftest import DATA_ROOT

BRATS = DATA_ROOT / "BraTS_sample"
CASE = "brats_2013_pat0001_1"
CROP = (slice(38, 94), slice(92, 156), slice(52, 116))  # KJI, around the tumour
SMALL = OSSNetConfig(encoder_channels=(4, 8, 8, 8), patch_features=16, global_latent=8, block_latent=8,
                     decoder_width=24, decoder_blocks=2)


@pytest.fixture(scope="module")
def case():
    if not (BRATS / CASE).is_dir():
        pytest.fail(f"Real test data missing: {BRATS / CASE}. Set EFFSEG_DATA to the shared data folder.")
    return load_case(BRATS, CASE).crop(CROP)


def calibrated_model(case, config: OSSNetConfig = SMALL, seed: int = 0, patch_weight: float = 0.1) -> OSSNet:
    """A random model made to draw a plausible border in the crop: its occupancy varies smoothly
    (the patch pathway is damped to ``patch_weight``) and widely (logits scaled to a standard
    deviation of 4), about a third of the crop is inside, and the coarse head flags a fifth of its cells."""
    torch.manual_seed(seed)
    model = OSSNet(config).eval()
    sampler = VolumeSampler(normalize_images(case.images), case.spacing[::-1], config.encoder_spacing,
                            config.patch_spacing)
    with torch.no_grad():
        model.decoder_in.weight[:, 3:3 + config.patch_features] *= patch_weight
        encoding = model.encode(sampler.encoder_input(encoder_grid_shape(sampler.extent, config.encoder_spacing,
                                                                         config.pooling), config.encoder_spacing))
        points = ((torch.rand(4000, 3, generator=torch.Generator().manual_seed(1)) - 0.5)
                  * torch.tensor(sampler.extent)).float()
        logits = model.decode(encoding, points, sampler.patches(points, config.patch_size, config.patch_spacing))
        model.decoder_out.weight *= 4 / logits.std()
        model.decoder_out.bias.mul_(4 / logits.std()).sub_(torch.quantile(logits * 4 / logits.std(), 0.67))
        model.coarse_head[-1].bias -= torch.quantile(encoding.coarse_logits.flatten(), 0.8)
    return model


@pytest.fixture(scope="module")
def model(case) -> OSSNet:
    return calibrated_model(case)


def test_shapes_and_size_budget(tmp_path) -> None:
    model = OSSNet(SMALL).eval()
    image = torch.randn(1, 2, 32, 48, 32)
    encoding = model.encode(image)
    assert [f.shape[2:] for f in encoding.features] == [(16, 24, 16), (8, 12, 8), (4, 6, 4), (2, 3, 2)]
    assert encoding.coarse_logits.shape == (1, 1, 8, 12, 8)  # block 2: 4 x the encoder spacing
    assert encoding.global_latent.shape == (1, SMALL.global_latent)
    points = torch.randn(10, 3) * 20
    patches = torch.randn(10, 2, 7**3)
    assert model.decode(encoding, points, patches).shape == (10,)
    with pytest.raises(ValueError, match="multiple"):
        model.encode(torch.randn(1, 2, 30, 32, 32))
    # The configuration we train: small enough for a CPU, weights of a few MB at most.
    full = OSSNet(default_config())
    assert full.parameter_count < 1_000_000
    save_model(tmp_path / "m.pt", full, {})
    assert (tmp_path / "m.pt").stat().st_size < 4_000_000


def test_model_file_round_trip(tmp_path, case, model) -> None:
    save_model(tmp_path / "m.pt", model, {"seed": 3})
    loaded, metadata = load_model(tmp_path / "m.pt")
    assert metadata == {"seed": 3} and loaded.config == model.config
    a = segment(model, case.images, case.spacing, return_probabilities=True)
    b = segment(loaded, case.images, case.spacing, return_probabilities=True)
    assert np.array_equal(a.probabilities, b.probabilities)
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an OSS-Net model"):
        load_model(tmp_path / "bad.pt")


def test_normalisation_sets_background_and_z_scores_the_head(case) -> None:
    image = case.images[0]
    out = normalize_channel(image)
    head = image > image.min()
    assert np.all(out[~head] == BACKGROUND)
    assert abs(out[head].mean()) < 0.05 and abs(out[head].std() - 1) < 0.05


@pytest.mark.parametrize("spacing,request_", [((1.0, 1.0, 1.0), {"output_spacing": 0.5}),
                                              ((1.0, 1.0, 1.0), {"output_spacing": 2.0}),
                                              ((0.9, 1.2, 3.0), {"output_spacing": (1.0, 1.0, 1.0)}),
                                              ((0.9, 1.2, 3.0), {"output_spacing": (0.63, 0.84, 2.1)}),
                                              ((1.0, 1.0, 1.0), {})])
def test_output_grid_is_the_one_with_spacing_builds(spacing, request_) -> None:
    shape = (155, 240, 231)
    out_shape, out_spacing = output_grid(shape, spacing, **request_)
    geometry = VolumeGeometry.compose(shape, spacing, origin=(10.0, -20.0, 5.0)).with_spacing(out_spacing)
    assert geometry.shape_kji == out_shape
    assert np.allclose(geometry.spacing, out_spacing)


def test_level_strides() -> None:
    assert level_strides(1.0) == [4, 2, 1]
    assert level_strides(0.5) == [8, 4, 2, 1]
    assert level_strides(2.0) == [2, 1]
    assert level_strides(5.0) == [1]
    assert level_strides((0.5, 0.5, 3.0)) == [2, 1]  # thick slices: never more than 8 mm between points


def test_segment_at_a_finer_resolution(case, model) -> None:
    part = case.crop((slice(8, 40), slice(16, 56), slice(16, 56)))
    native = segment(model, part.images, part.spacing)
    fine = segment(model, part.images, part.spacing, output_spacing=tuple(s / 2 for s in part.spacing), return_probabilities=True)
    assert native.shape == part.labels.shape and native.labels.dtype == np.uint8
    assert fine.shape == tuple(2 * n for n in part.labels.shape) and fine.spacing == (0.5, 0.5, 0.5)
    assert fine.probabilities.shape == fine.shape and fine.probabilities.dtype == np.float32
    assert np.array_equal(fine.labels, (fine.probabilities > 0.5).astype(np.uint8))
    assert [level.stride for level in fine.levels] == [8, 4, 2, 1]
    # Both found a border, and mostly the same one (a 2x downsampled fine result vs the native one).
    assert 0.05 < native.labels.mean() < 0.9
    agreement = (fine.labels[::2, ::2, ::2] == native.labels).mean()
    assert agreement > 0.9


def test_coarse_to_fine_decodes_only_near_the_coarse_prediction_and_its_border(case, model) -> None:
    config = model.config
    levels = {}
    result = segment(model, case.images, case.spacing,
                     decode_hook=lambda level, stride, indices, previous: levels.__setitem__(level, (stride, indices, previous)))
    assert 0 < result.decoded_fraction < 0.5
    assert result.decoded_points == sum(len(indices) for _, indices, _ in levels.values())
    assert [stride for stride, _, _ in levels.values()] == [4, 2, 1]

    # Level 0: only points in cells that the coarse head flags (dilated by one cell) ...
    sampler = VolumeSampler(normalize_images(case.images), case.spacing[::-1], config.encoder_spacing,
                            config.patch_spacing)
    with torch.no_grad():
        encoding = model.encode(sampler.encoder_input(encoder_grid_shape(sampler.extent, config.encoder_spacing,
                                                                         config.pooling), config.encoder_spacing))
    shape = case.labels.shape

    def positions(indices: np.ndarray) -> torch.Tensor:  # 1 mm output grid, padded at the far end
        return torch.tensor(indices - (np.array(shape) - 1) / 2, dtype=torch.float32)

    stride, indices, _ = levels[0]
    assert len(indices) > 0
    assert bool((model.coarse_probability(encoding, positions(indices * stride), dilate=1) > 0.5).all())
    # ... and that is not every point (the selection does something).
    every = np.argwhere(np.ones([(n - 1) // 4 + 2 for n in shape], bool))
    assert float((model.coarse_probability(encoding, positions(every * 4), dilate=1) > 0.5).float().mean()) < 0.9

    # Finer levels: every decoded point lies within the margin (one coarser point, max norm) of a
    # coarser point whose label differs from a neighbour's, i.e. near the current border.
    for level in (1, 2):
        stride, indices, previous = levels[level]
        assert len(indices) > 0 and previous is not None
        border = np.zeros(previous.shape, bool)
        for axis in range(3):
            differ = np.diff(previous.astype(np.int8), axis=axis) != 0
            border[tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))] |= differ
            border[tuple(slice(1, None) if a == axis else slice(None) for a in range(3))] |= differ
        distance, _ = cKDTree(np.argwhere(border)).query(indices / 2, p=np.inf)
        assert distance.max() <= 1 + 0.5, (level, distance.max())  # in coarser points


def test_chunking_gives_the_same_result_with_bounded_decoder_calls(case, model) -> None:
    largest = []
    decode = model.decode

    def counting(encoding, points, patches):
        largest.append(points.shape[0])
        return decode(encoding, points, patches)

    whole = segment(model, case.images, case.spacing, chunk_size=10**7, return_probabilities=True)
    model.decode = counting
    try:
        chunked = segment(model, case.images, case.spacing, chunk_size=500, return_probabilities=True)
    finally:
        del model.decode
    assert max(largest) <= 500 and sum(largest) == chunked.decoded_points == whole.decoded_points
    assert len(largest) > 10
    assert np.array_equal(whole.labels, chunked.labels)
    assert np.allclose(whole.probabilities, chunked.probabilities, atol=1e-5)


def test_levels_of_labels_alone_give_the_labels_of_the_probability_levels(case, model) -> None:
    """Without probabilities the levels keep one byte per point (the memory of a fine output);
    the segmentation and the points decoded are exactly those of the float levels."""
    for factor in (1.0, 0.5):
        labels_only = segment(model, case.images, case.spacing, output_spacing=tuple(s * factor for s in case.spacing))
        with_probabilities = segment(model, case.images, case.spacing, output_spacing=tuple(s * factor for s in case.spacing), return_probabilities=True)
        assert labels_only.probabilities is None
        assert np.array_equal(labels_only.labels, with_probabilities.labels)
        assert labels_only.decoded_points == with_probabilities.decoded_points


def test_progress_and_cancel(case, model) -> None:
    seen = []
    segment(model, case.images, case.spacing, chunk_size=2000, progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and all(b >= a for a, b in zip(seen, seen[1:], strict=False))
    calls = []
    with pytest.raises(CancelledError):
        segment(model, case.images, case.spacing, chunk_size=500, cancel=lambda: calls.append(1) or len(calls) > 3)


def test_resolution_independence_of_the_occupancy_function(case, model) -> None:
    """The same volume resampled from 1 mm to 1.6 mm gives nearly the same occupancy at the same
    physical points (an untrained model: the function, not its quality; the trained-weights test
    checks segmentations)."""
    volume = torch.from_numpy(np.stack(case.images))
    low, low_spacing = resample_centred(volume, case.spacing[::-1], 1.6)
    assert low.shape[1:] == (35, 40, 40)
    a = segment(model, case.images, case.spacing, output_spacing=2.0, return_probabilities=True)
    b = segment(model, [c.numpy() for c in low], low_spacing[::-1], output_spacing=2.0, return_probabilities=True,
                levels=1, coarse_threshold=-1)
    full = segment(model, case.images, case.spacing, output_spacing=2.0, return_probabilities=True,
                   levels=1, coarse_threshold=-1)
    assert a.shape == b.shape == full.shape
    p, q = full.probabilities, b.probabilities
    assert np.corrcoef(p.ravel(), q.ravel())[0, 1] > 0.9
    assert np.abs(p - q).mean() < 0.25 * p.std() + 1e-6
    assert (a.labels == b.labels).mean() > 0.85


def test_inference_and_training_are_deterministic(case) -> None:
    first, second = calibrated_model(case, seed=5), calibrated_model(case, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True))
    a = segment(first, case.images, case.spacing, output_spacing=2.0, return_probabilities=True)
    b = segment(second, case.images, case.spacing, output_spacing=2.0, return_probabilities=True)
    assert np.array_equal(a.probabilities, b.probabilities)

    settings = TrainingSettings(points=256, iterations=4, warmup=1, crop_range=(40.0, 56.0))
    volume = TrainingVolume(case, SMALL, settings.band)

    def train(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        model = OSSNet(SMALL)
        trainer = Trainer(model, [volume], settings, seed)
        losses = [trainer.step(i)["loss"] for i in range(2)]
        assert all(np.isfinite(losses))
        return [p.detach().clone() for p in model.parameters()]

    one, two, other = train(7), train(7), train(8)
    assert all(torch.equal(x, y) for x, y in zip(one, two, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(one, other, strict=True))


def test_fast_patch_extraction_equals_trilinear_sampling(case) -> None:
    """Patches on the voxel grid (step = spacing: any flips, any sub-voxel position) are gathered
    as blocks; they must equal general trilinear sampling, also at the border and in a crop."""
    sampler = VolumeSampler(normalize_images(case.images), case.spacing[::-1], 2.0, 1.0)
    generator = torch.Generator().manual_seed(0)
    points = (torch.rand(300, 3, generator=generator) - 0.5) * (torch.tensor(sampler.extent) + 10)
    half = torch.tensor(sampler.extent, dtype=torch.float64) / 2
    for transform in (Transform.identity(),
                      Transform(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64), 1.0,
                                torch.tensor([3.0, -2.0, 1.5], dtype=torch.float64), -half / 2, half / 3)):
        fast = sampler.patches(points, 7, 1.0, transform)
        positions = (points[:, None, :] + sampler.offsets(7, 1.0)[None]).reshape(-1, 3)
        slow = sampler._read(sampler.fine, sampler.fine_extent, positions, transform) + BACKGROUND
        slow = slow.reshape(2, 300, -1).permute(1, 0, 2)
        assert torch.allclose(fast, slow, atol=1e-4)
    # A step that is not one voxel takes the general path.
    assert sampler.patches(points, 7, 1.5).shape == (300, 2, 343)


def test_training_augmentation_is_a_consistent_change_of_coordinates(case) -> None:
    """Flipping through the transform equals flipping the arrays, and a patch's centre is the
    voxel's own value, so image, points, patches and labels stay aligned."""
    volume = TrainingVolume(case, SMALL, 3)
    sampler = volume.sampler
    grid = encoder_grid_shape(sampler.extent, 2.0, 16)
    half = volume.extent / 2
    flip = Transform(torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64), 1.0, torch.zeros(3, dtype=torch.float64),
                     -half, half)
    plain = sampler.encoder_input(grid, 2.0)
    assert torch.allclose(sampler.encoder_input(grid, 2.0, flip), plain.flip(2).flip(4), atol=1e-5)
    flat = volume.band[:: max(1, len(volume.band) // 500)]
    positions = volume.positions(flat)
    normalized = normalize_images(case.images).reshape(2, -1)[:, flat].T
    centre = 7**3 // 2
    for transform in (Transform.identity(), flip):
        points = transform.to_model(positions).float()
        patches = sampler.patches(points, 7, 1.0, transform)
        assert torch.allclose(patches[:, :, centre], torch.from_numpy(normalized), atol=1e-4)
    trainer = Trainer(OSSNet(SMALL), [volume], TrainingSettings(), 0)
    target = trainer.coarse_target(volume, grid, Transform(torch.ones(3, dtype=torch.float64), 1.0,
                                                           torch.zeros(3, dtype=torch.float64), -half, half))
    assert torch.equal(trainer.coarse_target(volume, grid, flip), target.flip(2).flip(4))
    # The coarse target covers the tumour: every tumour voxel's cell is flagged.
    cell = 2.0 * 4
    tumour = np.argwhere(case.target)
    cells = [np.floor((centred_positions(n, 1.0)[tumour[:, a]] + g * 2.0 / 2) / cell).astype(int)
             for a, (n, g) in enumerate(zip(case.labels.shape, grid, strict=True))]
    assert bool(target[0, 0][tuple(torch.from_numpy(np.stack(cells)))].all())
