"""Input preparation and sampling in physical space, shared by training and inference.

Every position here is in millimetres, in the array's KJI axis order, relative to the centre
of the volume's box (the box that the voxels tile, half a voxel beyond the outer voxel
centres). Voxel ``i`` of an axis with ``n`` voxels of spacing ``s`` lies at ``(i - (n-1)/2) * s``.
Because positions are physical, the same point of the same anatomy has the same position
whatever the spacing the volume was sampled at, which is what lets one set of weights serve
volumes of any spacing and size.

Images are normalised per channel (z-score inside the non-background voxels, clipped), and
everything outside the head or outside the volume reads as ``BACKGROUND``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from EfficientSegmentationCommon.input_checks import foreground_mask

# Normalised intensity of background (outside the head, outside the volume box).
BACKGROUND = -5.0
# Normalised intensities are clipped to this range (contrast-enhancing tumour reaches about +9).
CLIP = (BACKGROUND, 10.0)
# Brain intensities are winsorised at these percentiles (%) before their mean and SD are taken.
STATISTICS_PERCENTILES = (0.1, 99.9)


def normalize_channel(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Z-score one image inside ``mask``, clip, and set the rest to ``BACKGROUND``. Returns
    float32 of the same shape.

    The default mask is the brain of a skull-stripped scan: every voxel that is not its constant
    background value (``input_checks.foreground_mask``: the minimum in BraTS, 0 in a brain
    z-scored with its background left at 0). The mean
    and SD are those of the brain's intensities winsorised at ``STATISTICS_PERCENTILES``, so a
    few extreme voxels cannot shift or stretch the scale (issue 16.3: one FLAIR voxel of 1e4,
    where the brain's SD is about 1.4, used to empty the result).
    """
    image = np.asarray(image, dtype=np.float32)
    if mask is None:
        mask = foreground_mask(image)
    mask = np.asarray(mask, dtype=bool)
    if mask.sum() < 100:  # (nearly) constant image: nothing to call background
        mask = np.ones(image.shape, dtype=bool)
    values = image[mask].astype(np.float64)
    low, high = np.percentile(values, STATISTICS_PERCENTILES)
    np.clip(values, low, high, out=values)
    mean, std = float(values.mean()), float(values.std())
    out = (image - np.float32(mean)) / np.float32(max(std, 1e-6))
    np.clip(out, CLIP[0], CLIP[1], out=out)
    out[~mask] = BACKGROUND
    return out


def normalize_images(images: Sequence[np.ndarray]) -> np.ndarray:
    """Stack of normalised channels, (C, K, J, I) float32; all images must share one grid."""
    shapes = {tuple(np.shape(image)) for image in images}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"input images must be 3D and on one grid, got shapes {sorted(shapes)}")
    return np.stack([normalize_channel(image) for image in images])


def centred_positions(size: int, spacing: float) -> np.ndarray:
    """Positions (mm, relative to the box centre) of the voxel centres along one axis."""
    return (np.arange(size, dtype=np.float64) - (size - 1) / 2) * spacing


def smooth(volume: torch.Tensor, spacing: Sequence[float], target_spacing: float) -> torch.Tensor:
    """Gaussian pre-filter so that a (C, K, J, I) volume of ``spacing`` (KJI, mm) can be sampled
    at ``target_spacing`` without aliasing: along each axis finer than the target, the added
    blur widens the voxel's point spread from its spacing to the target (FWHM in quadrature)."""
    out = volume
    for axis, step in enumerate(spacing):
        sigma = math.sqrt(max(target_spacing**2 - step**2, 0.0)) / 2.3548 / step  # in voxels
        if sigma < 0.25:
            continue
        radius = max(1, int(math.ceil(2.5 * sigma)))
        taps = torch.arange(-radius, radius + 1, dtype=volume.dtype)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        kernel = kernel / kernel.sum()
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = 2 * radius + 1
        weight = kernel.reshape(shape).repeat(out.shape[0], 1, 1, 1, 1)
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius  # F.pad lists the last axis first
        padded = F.pad(out[None], pad, mode="replicate")
        out = F.conv3d(padded, weight, groups=out.shape[0])[0]
    return out


def resample_centred(volume: torch.Tensor, spacing: Sequence[float], target_spacing: float) -> tuple[torch.Tensor, tuple[float, ...]]:
    """Smooth and resample a (C, K, J, I) volume to about ``target_spacing`` over the same box.

    The new size is the box extent over the target spacing, rounded; the returned spacing is
    the exact one (extent / size), so the box is kept exactly."""
    extent = [n * s for n, s in zip(volume.shape[1:], spacing, strict=True)]
    size = [max(1, int(round(e / target_spacing))) for e in extent]
    if list(volume.shape[1:]) == size:
        return volume, tuple(float(s) for s in spacing)
    smoothed = smooth(volume, spacing, target_spacing)
    out = F.interpolate(smoothed[None], size=size, mode="trilinear", align_corners=False)[0]
    return out, tuple(e / n for e, n in zip(extent, size, strict=True))


def normalized_grid(positions: torch.Tensor, extent: Sequence[float]) -> torch.Tensor:
    """``grid_sample`` coordinates (x, y, z = I, J, K, in -1..1 over the box, align_corners=False)
    of positions (..., 3) in mm, KJI order, relative to the centre of a box of ``extent`` mm."""
    scale = torch.tensor([2.0 / e for e in extent], dtype=positions.dtype)
    return (positions * scale).flip(-1)


def sample(volume: torch.Tensor, extent: Sequence[float], positions: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of a (C, K, J, I) volume at positions (P, 3) -> (C, P); zero outside
    the box (callers keep volumes with the background shifted to zero)."""
    grid = normalized_grid(positions, extent).reshape(1, -1, 1, 1, 3)
    values = F.grid_sample(volume[None], grid.to(volume.dtype), mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    return values.reshape(volume.shape[0], -1)


@dataclass
class Transform:
    """Maps model-space positions to image-space ones: ``image = centre + flip * model / scale``.

    The identity at inference; training draws flips, a scale and a crop box (image space,
    ``low``..``high`` mm) outside which the model sees background, as if the volume had been
    cropped there.
    """

    flip: torch.Tensor  # (3,), +1 or -1
    scale: float = 1.0
    centre: torch.Tensor | None = None  # (3,) image-space mm; None: the box centre
    low: torch.Tensor | None = None
    high: torch.Tensor | None = None

    @classmethod
    def identity(cls) -> "Transform":
        return cls(torch.ones(3, dtype=torch.float64))

    def to_image(self, positions: torch.Tensor) -> torch.Tensor:
        image = positions * (self.flip.to(positions.dtype) / self.scale)
        return image if self.centre is None else image + self.centre.to(positions.dtype)

    def to_model(self, positions: torch.Tensor) -> torch.Tensor:
        centred = positions if self.centre is None else positions - self.centre.to(positions.dtype)
        return centred * (self.flip.to(positions.dtype) * self.scale)

    def inside(self, image_positions: torch.Tensor) -> torch.Tensor | None:
        """Mask (P,) of image-space positions inside the crop box; None when there is no crop."""
        if self.low is None:
            return None
        low, high = self.low.to(image_positions.dtype), self.high.to(image_positions.dtype)
        return ((image_positions >= low) & (image_positions <= high)).all(dim=-1)


class VolumeSampler:
    """Reads a normalised multi-channel volume at physical positions, for the encoder and the patches.

    Holds two copies with the background shifted to zero: one smoothed and resampled to about
    the encoder's spacing (whole-volume context), one pre-filtered to the patch spacing (local
    observations; unchanged when the volume is not finer than the patch spacing) and padded by
    one voxel of background.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, spacing: Sequence[float],
                 encoder_spacing: float, patch_spacing: float) -> None:
        volume = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32)
        if volume.dim() != 4:
            raise ValueError(f"expected a (channels, K, J, I) volume, got shape {tuple(volume.shape)}")
        self.spacing = tuple(float(s) for s in spacing)
        self.shape = tuple(volume.shape[1:])
        self.extent = tuple(n * s for n, s in zip(self.shape, self.spacing, strict=True))
        self.channels = volume.shape[0]
        shifted = volume - BACKGROUND
        self.coarse = resample_centred(shifted, self.spacing, encoder_spacing)[0].contiguous()
        self.fine = F.pad(smooth(shifted, self.spacing, patch_spacing), (1, 1, 1, 1, 1, 1)).contiguous()
        self.fine_extent = tuple((n + 2) * s for n, s in zip(self.shape, self.spacing, strict=True))
        self._offsets: dict[tuple[int, float], torch.Tensor] = {}

    def _read(self, volume: torch.Tensor, extent: Sequence[float], positions: torch.Tensor,
              transform: Transform | None) -> torch.Tensor:
        """(C, P) samples at model-space positions (P, 3)."""
        if transform is None:
            return sample(volume, extent, positions)
        image_positions = transform.to_image(positions)
        values = sample(volume, extent, image_positions)
        inside = transform.inside(image_positions)
        return values if inside is None else values * inside.to(values.dtype)

    def encoder_input(self, shape: Sequence[int], spacing: float, transform: Transform | None = None) -> torch.Tensor:
        """The encoder's input, (1, C, *shape), on a centred grid of ``spacing`` mm in model space."""
        axes = [torch.as_tensor(centred_positions(n, spacing), dtype=torch.float32) for n in shape]
        positions = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
        return self._read(self.coarse, self.extent, positions, transform).reshape(1, self.channels, *shape) + BACKGROUND

    def offsets(self, size: int, step: float) -> torch.Tensor:
        """The (size^3, 3) offsets (mm, KJI) of a patch, K slowest: the patch's flattening order."""
        key = (size, step)
        if key not in self._offsets:
            line = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2) * step
            self._offsets[key] = torch.stack(torch.meshgrid(line, line, line, indexing="ij"), dim=-1).reshape(-1, 3)
        return self._offsets[key]

    def patches(self, points: torch.Tensor, size: int, step: float, transform: Transform | None = None) -> torch.Tensor:
        """Local observations (N, C, size^3): the size^3 patch of ``step`` mm (model space) around
        each model-space point (N, 3), trilinear, background outside the volume (and the crop)."""
        transform = transform or Transform.identity()
        voxel_steps = [step / (transform.scale * s) for s in self.spacing]
        if all(abs(v - 1) < 1e-6 for v in voxel_steps):
            values = self._patches_on_grid(points, size, step, transform)
        else:  # patch samples fall between voxels at different fractions: general interpolation
            positions = (points[:, None, :] + self.offsets(size, step)[None, :, :]).reshape(-1, 3)
            values = self._read(self.fine, self.fine_extent, positions, transform)
            values = values.reshape(self.channels, points.shape[0], -1).permute(1, 0, 2)
        return values + BACKGROUND

    def _patches_on_grid(self, points: torch.Tensor, size: int, step: float, transform: Transform) -> torch.Tensor:
        """Fast path when the patch step is one voxel along each axis: every sample of a patch has
        the same fractional position as its centre. Points on voxel centres (the input's own grid)
        gather their patch directly; others gather the (size+1)^3 block around it and interpolate
        along each axis once."""
        image = transform.to_image(points.double())
        spacing = torch.tensor(self.spacing, dtype=torch.float64)
        padded = [n + 2 for n in self.shape]
        index = image / spacing + (torch.tensor(padded, dtype=torch.float64) - 1) / 2  # in the padded volume
        half = (size - 1) // 2
        nearest = torch.round(index)
        on_grid = bool(((index - nearest).abs() < 1e-4).all())
        base = nearest if on_grid else torch.floor(index)
        line = torch.arange(-half, size - half + (0 if on_grid else 1))
        block = [torch.clamp(base[:, a].long()[:, None] + line, 0, padded[a] - 1) for a in range(3)]
        flat = ((block[0][:, :, None, None] * padded[1] + block[1][:, None, :, None]) * padded[2]
                + block[2][:, None, None, :]).reshape(-1)
        values = torch.stack([channel.reshape(-1).index_select(0, flat) for channel in self.fine])
        values = values.reshape(self.channels, points.shape[0], *[len(line)] * 3)
        if not on_grid:
            fraction = (index - base).float()
            for axis in range(3):
                f = fraction[:, axis].reshape([1, -1] + [1] * 3)
                low = values.narrow(2 + axis, 0, size)
                values = torch.addcmul(low, values.narrow(2 + axis, 1, size) - low, f)
        flips = [axis for axis in range(3) if float(transform.flip[axis]) < 0]
        if flips:  # model-space offsets run the other way along flipped axes
            values = values.flip([2 + axis for axis in flips])
        if transform.low is not None:  # outside the crop box reads as background
            offsets = (torch.arange(size, dtype=torch.float64) - half) * step / transform.scale
            inside = []
            for axis in range(3):
                along = image[:, axis:axis + 1] + offsets * float(transform.flip[axis])
                inside.append((along >= float(transform.low[axis])) & (along <= float(transform.high[axis])))
            mask = inside[0][:, :, None, None] & inside[1][:, None, :, None] & inside[2][:, None, None, :]
            values = values * mask.to(values.dtype)
        return values.permute(1, 0, 2, 3, 4).reshape(points.shape[0], self.channels, -1)


def encoder_grid_shape(extent: Sequence[float], spacing: float, multiple: int) -> tuple[int, ...]:
    """Size of the encoder's centred grid covering a box of ``extent`` mm: extent / spacing
    rounded, then up to a multiple of the total pooling factor (the border reads as background)."""
    return tuple(int(math.ceil(max(1, round(e / spacing)) / multiple) * multiple) for e in extent)
