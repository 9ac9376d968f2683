"""Training-time augmentation on batches of (image, labels) tensors.

The reference trains without augmentation; the paper nevertheless reports robustness to MRI
artefacts (noise, bias field, blur, contrast) and to shifts, so we train for those: random
placement on the canvas (done by the sampler), left-right flips (the data mixes left and right
hippocampi), small rotations and scalings, and intensity changes that mimic scanner variation.
Everything runs in torch on the whole batch, so it costs little next to the automaton.

MRI acquisition artefacts that a slice-wise transform cannot make (motion and ghosting act in
k-space, thick slices across the slicing axis) are added once per training volume by
:func:`artefact_copies` with torchio, before slices are drawn (issue 14: the shipped model lost
more than 0.03 Dice under moderate motion and 3 mm slices).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _random_affine(batch: int, dims: int, generator: torch.Generator, max_degrees: float,
                   max_scale: float) -> torch.Tensor:
    """Affine matrices (batch, dims, dims+1) for affine_grid: rotation in the slice plane and scaling."""
    angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(max_degrees)
    scale = 1 + (torch.rand(batch, generator=generator) * 2 - 1) * max_scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(batch, dims, dims + 1)
    # Rotate the last two spatial axes (the slice plane in 2D; J-I plane in 3D); scale all.
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    if dims == 3:
        theta[:, 2, 2] = 1 / scale
    return theta


def augment(image: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
            max_degrees: float = 12.0, max_scale: float = 0.12) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment image (B, C, *S) in 0..1 and integer labels (B, *S); returns new tensors."""
    batch, dims = image.shape[0], image.dim() - 2
    # Left-right flip: I, the last axis.
    flip = torch.rand(batch, generator=generator) < 0.5
    image = torch.where(flip.view(-1, *[1] * (dims + 1)), image.flip(-1), image)
    labels = torch.where(flip.view(-1, *[1] * dims), labels.flip(-1), labels)

    theta = _random_affine(batch, dims, generator, max_degrees, max_scale)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)[:, 0].round().long()

    shape = (batch, *[1] * (dims + 1))
    # Contrast (gamma) and brightness/contrast scaling.
    gamma = torch.exp((torch.rand(shape, generator=generator) * 2 - 1) * 0.4)
    image = image.clamp(0, 1) ** gamma
    image = image * (0.85 + 0.3 * torch.rand(shape, generator=generator)) + (torch.rand(shape, generator=generator) - 0.5) * 0.1
    # Smooth multiplicative bias field: a random linear ramp over the field of view.
    coords = [torch.linspace(-1, 1, n) for n in image.shape[2:]]
    mesh = torch.stack(torch.meshgrid(*coords, indexing="ij"))  # (dims, *S)
    slope = (torch.rand(batch, dims, generator=generator) * 2 - 1) * 0.2
    field = 1 + torch.einsum("bd,d...->b...", slope, mesh)[:, None]
    image = image * field
    # Gaussian noise of random strength, in half of the samples.
    sigma = torch.rand(shape, generator=generator) * 0.06 * (torch.rand(shape, generator=generator) < 0.5)
    image = image + sigma * torch.randn(image.shape, generator=generator)
    return image.clamp(0, 1), labels


def artefact_transform():
    """One random MRI acquisition artefact per call, as a torchio transform (torchio imported here).

    Ranges reach from mild to between the robustness benchmark's moderate and strong levels
    (``Testing/Benchmarks/robustness_benchmark.py``: motion 3/8 degrees and mm, slices 3/5 mm
    (:func:`thick_slices`; 1.5 to 5 here),
    blur 0.75/1.5 mm, spike 0.3/1.0, ghosting 0.4/1.0), drawn at random rather than at those
    levels so that the benchmark does not test the training parameters. Intensities are meant
    for an image scaled to [0, 1]; torchio axes are (I, J, K) and the automaton slices along K.
    """
    import torchio as tio

    def random_thick_slices(tensor: torch.Tensor) -> torch.Tensor:
        return thick_slices(tensor, 1.5 + 3.5 * float(torch.rand(())))  # 1.5 to 5 voxels

    return tio.OneOf({
        tio.RandomMotion(degrees=6.0, translation=6.0, num_transforms=2): 1.0,
        tio.Lambda(random_thick_slices): 1.0,
        tio.RandomBlur(std=(0.25, 1.25)): 1.0,
        tio.RandomSpike(num_spikes=(1, 1), intensity=(0.1, 0.5)): 1.0,  # one int n would mean 0 to n
        tio.RandomGhosting(num_ghosts=(2, 6), axes=(0, 1), intensity=(0.2, 0.8)): 1.0,
    })


def thick_slices(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    """The image as a scan with slices ``factor`` voxels thick across K would show it, on its own grid.

    Args:
        tensor: image (C, I, J, K), torchio's axis order; voxels of any size (``factor`` counts them).
        factor: slice thickness and spacing in voxels along K (3: 3 mm slices of a 1 mm image).

    Returns a new (C, I, J, K) float tensor. Each slice averages ``factor`` voxels (torchio's
    anti-aliasing: the Gaussian slice profile of Cardoso et al., MICCAI 2015), the slice centres
    lie symmetrically about the volume's centre, and the slices are interpolated back linearly,
    as a viewer or our logic resamples a thick-slice scan. torchio's ``RandomAnisotropy`` is not
    used: it samples single voxels (nearest neighbour, no slice thickness) on a grid whose
    centres fall half a voxel off for some lengths (for 3: 31, 34, 37, 40 and 43 voxels), so the
    image moved half a voxel against its labels for 14 of the 42 validation crops
    (Testing/Benchmarks/RESULTS.md). Needs torchio.
    """
    import torchio as tio

    length = tensor.shape[-1]
    count = max(1, math.ceil(length / factor))
    first = (length - 1) / 2 - (count - 1) / 2 * factor  # first slice centre, in voxels
    thick = np.eye(4)
    thick[2, 2], thick[2, 3] = factor, first
    image = tio.ScalarImage(tensor=tensor.float(), affine=np.eye(4))
    down = tio.Resample(target=((*tensor.shape[1:3], count), thick), image_interpolation="linear",
                        antialias=True)(image)
    return tio.Resample(target=(tuple(tensor.shape[1:]), np.eye(4)), image_interpolation="linear")(down).data


def artefact_copies(image: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """``count`` copies of a raw volume (K, J, I), each with one random artefact of :func:`artefact_transform`.

    The image is scaled to [0, 1] by its minimum and 99.5th percentile for the transform and
    scaled back, so the artefact strength does not depend on the scanner's units. Deterministic
    for a given ``seed`` (torch's global generator is forked, not disturbed). Needs torchio
    (``pip install -e '.[benchmark]'``) unless ``count`` is 0; raises ImportError without it.
    """
    if count == 0:
        return []
    import torchio as tio

    low, high = float(image.min()), float(np.percentile(image, 99.5))
    scale = high - low if high > low else 1.0
    tensor = torch.from_numpy(np.ascontiguousarray(((image - low) / scale).T[None])).float()  # KJI -> (1, I, J, K)
    transform = artefact_transform()
    copies = []
    with torch.random.fork_rng():
        for index in range(count):
            torch.manual_seed(seed * 1000 + index)
            subject = transform(tio.Subject(image=tio.ScalarImage(tensor=tensor, affine=np.eye(4))))
            copies.append(np.ascontiguousarray(subject["image"].data[0].numpy().T * scale + low, dtype=np.float32))
    return copies
