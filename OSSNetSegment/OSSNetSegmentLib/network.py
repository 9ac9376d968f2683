"""OSS-Net (Reich et al., BMVC 2021), variant C, sized for a CPU.

The segmentation is a function occupancy(point) -> [0, 1] that can be queried anywhere:
- an encoder (3D residual CNN) reads a downscaled copy of the whole volume once and yields
  feature maps at four scales, a global latent and a coarse segmentation (auxiliary head);
- every query point gets a local observation, the 7x7x7 patch of the full-resolution image
  around it, encoded by two layers that are, on a 7x7x7 patch, 7x7x7 convolutions;
- a residual decoder with conditional batch norm maps coordinates + patch features + global
  latent to the occupancy logit; each block's normalisation is modulated by a latent vector.

Differences from the reference, chosen so that the model runs on a CPU and one set of weights
serves any spacing and size (each is stated in the model card):
- a standard activation (SiLU) instead of the Pade activation unit, which needs a CUDA kernel;
- coordinates are physical: mm from the volume's centre over ``coordinate_scale``, not voxel
  indices; the patch is sampled at ``patch_spacing`` mm steps and the encoder reads the volume
  resampled to ``encoder_spacing`` mm, whatever the input's spacing;
- the per-block latents are read from each encoder block's feature map at the query point
  (trilinear) instead of flattening maps pooled to a fixed 8x8x5 grid, which would tie the
  weights to one volume size; the global latent is the average of the deepest features;
- widths are small (about 0.4M parameters instead of 8.7M).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .preprocessing import BACKGROUND, normalized_grid


@dataclass
class OSSNetConfig:
    """Everything that defines a model; stored beside the weights so a file is self-describing."""

    inputs: tuple[str, ...] = ("FLAIR", "T1c")  # input channels, in this order
    encoder_channels: tuple[int, ...] = (16, 24, 32, 48)  # one residual block each, each halves the grid
    encoder_spacing: float = 2.0  # mm; the encoder reads the volume resampled to this spacing
    coarse_block: int = 2  # the auxiliary head works on this block's grid (1-based; 2 -> 4x encoder spacing)
    patch_size: int = 7
    patch_spacing: float = 1.0  # mm between patch samples
    patch_features: int = 64
    global_latent: int = 32
    block_latent: int = 32
    decoder_width: int = 96
    decoder_blocks: int = 5
    activation: str = "silu"
    coordinate_scale: float = 100.0  # mm per unit of the decoder's coordinate input

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "OSSNetConfig":
        known = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def in_channels(self) -> int:
        return len(self.inputs)

    @property
    def pooling(self) -> int:
        """Total downscaling of the encoder: grid sizes must be multiples of it."""
        return 2 ** len(self.encoder_channels)

    @property
    def coarse_spacing(self) -> float:
        """Cell size (mm) of the auxiliary coarse segmentation."""
        return self.encoder_spacing * 2**self.coarse_block


def activation(name: str) -> nn.Module:
    return {"silu": nn.SiLU(), "relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.1)}[name]


class EncoderBlock(nn.Module):
    """conv3 -> BN -> act -> 2x average pool -> conv3 -> BN, plus a 1x1 residual of the pooled input."""

    def __init__(self, cin: int, cout: int, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm3d(cout)
        self.skip = nn.Conv3d(cin, cout, 1, bias=False)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool3d(self.act(self.norm1(self.conv1(x))), 2)
        h = self.norm2(self.conv2(h))
        return self.act(h + self.skip(F.avg_pool3d(x, 2)))


class ConditionalBatchNorm(nn.Module):
    """Batch norm without its own affine; gamma and beta are linear in a latent (start at 1 and 0)."""

    def __init__(self, width: int, latent: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(width, affine=False)
        self.gamma = nn.Linear(latent, width)
        self.beta = nn.Linear(latent, width)
        for layer, bias in ((self.gamma, 1.0), (self.beta, 0.0)):
            nn.init.zeros_(layer.weight)
            nn.init.constant_(layer.bias, bias)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.gamma(z) + self.beta(z)


class DecoderBlock(nn.Module):
    """Residual block: (CBN -> act -> linear) twice, added to the input."""

    def __init__(self, width: int, latent: int, act: str) -> None:
        super().__init__()
        self.norm1 = ConditionalBatchNorm(width, latent)
        self.fc1 = nn.Linear(width, width)
        self.norm2 = ConditionalBatchNorm(width, latent)
        self.fc2 = nn.Linear(width, width)
        self.act = activation(act)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dh = self.fc1(self.act(self.norm1(h, z)))
        dh = self.fc2(self.act(self.norm2(dh, z)))
        return h + dh


@dataclass
class Encoding:
    """What the encoder computes once per volume: feature maps, global latent, coarse logits.

    All grids are centred on the volume and cover the same box of ``extent`` mm (model space).
    """

    features: list[torch.Tensor]  # (1, C_b, *grid_b) per block
    global_latent: torch.Tensor  # (1, G)
    coarse_logits: torch.Tensor  # (1, 1, *coarse grid)
    extent: tuple[float, float, float]


class OSSNet(nn.Module):
    def __init__(self, config: OSSNetConfig) -> None:
        super().__init__()
        self.config = c = config
        if not 1 <= c.coarse_block <= len(c.encoder_channels):
            raise ValueError("coarse_block must name one of the encoder blocks")
        channels = (c.in_channels, *c.encoder_channels)
        self.blocks = nn.ModuleList(EncoderBlock(a, b, c.activation) for a, b in zip(channels[:-1], channels[1:], strict=True))
        deeper = sum(c.encoder_channels[c.coarse_block - 1:])
        self.coarse_head = nn.Sequential(nn.Conv3d(deeper, 16, 3, padding=1), activation(c.activation),
                                         nn.Conv3d(16, 1, 1))
        self.global_fc = nn.Linear(c.encoder_channels[-1], c.global_latent)
        context = sum(c.encoder_channels) + c.global_latent
        # One latent for the decoder input and one per decoder block's conditional batch norm.
        self.latents = nn.Linear(context, c.block_latent * (1 + c.decoder_blocks))
        patch_values = c.in_channels * c.patch_size**3
        self.patch_net = nn.Sequential(nn.Linear(patch_values, c.patch_features), activation(c.activation),
                                       nn.Linear(c.patch_features, c.patch_features), activation(c.activation))
        self.decoder_in = nn.Linear(3 + c.patch_features + c.global_latent + c.block_latent, c.decoder_width)
        self.decoder = nn.ModuleList(DecoderBlock(c.decoder_width, c.block_latent, c.activation)
                                     for _ in range(c.decoder_blocks))
        self.decoder_out = nn.Linear(c.decoder_width, 1)
        self.act = activation(c.activation)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, image: torch.Tensor, spacing: float | None = None) -> Encoding:
        """Encode (1, C, *grid) sampled on a centred grid of ``spacing`` mm (default: the config's);
        grid sizes must be multiples of ``config.pooling``."""
        c = self.config
        spacing = c.encoder_spacing if spacing is None else spacing
        if image.shape[1] != c.in_channels:
            raise ValueError(f"expected {c.in_channels} channels ({', '.join(c.inputs)}), got {image.shape[1]}")
        if any(n % c.pooling for n in image.shape[2:]):
            raise ValueError(f"encoder grid {tuple(image.shape[2:])} is not a multiple of {c.pooling}")
        x = image - BACKGROUND  # background reads as zero, like the convolutions' zero padding
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        target = features[c.coarse_block - 1].shape[2:]
        head_input = torch.cat([features[c.coarse_block - 1]] +
                               [F.interpolate(f, size=target, mode="trilinear", align_corners=False)
                                for f in features[c.coarse_block:]], dim=1)
        coarse = self.coarse_head(head_input)
        global_latent = self.act(self.global_fc(features[-1].mean(dim=(2, 3, 4))))
        extent = tuple(float(n * spacing) for n in image.shape[2:])
        return Encoding(features, global_latent, coarse, extent)

    def decode(self, encoding: Encoding, points: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Occupancy logits (N,) of model-space points (N, 3; mm, KJI, from the volume centre)
        with their local observations (N, C, patch_size^3)."""
        c = self.config
        grid = normalized_grid(points, encoding.extent).reshape(1, -1, 1, 1, 3).to(points.dtype)
        local = [F.grid_sample(f, grid, mode="bilinear", padding_mode="border", align_corners=False)
                 .reshape(f.shape[1], -1).t() for f in encoding.features]
        context = torch.cat(local + [encoding.global_latent.expand(points.shape[0], -1)], dim=1)
        z = self.latents(context).split(c.block_latent, dim=1)
        patch = self.patch_net((patches - BACKGROUND).reshape(points.shape[0], -1))
        coordinates = points / c.coordinate_scale
        h = self.decoder_in(torch.cat([coordinates, patch, encoding.global_latent.expand(points.shape[0], -1), z[0]],
                                      dim=1))
        for block, latent in zip(self.decoder, z[1:], strict=False):
            h = block(h, latent)
        return self.decoder_out(self.act(h)).squeeze(1)

    def coarse_probability(self, encoding: Encoding, points: torch.Tensor, dilate: int = 0) -> torch.Tensor:
        """The auxiliary head's probability (N,) at model-space points, its grid max-filtered over
        ``dilate`` cells first (a margin around the region it flags)."""
        probability = torch.sigmoid(encoding.coarse_logits)
        if dilate > 0:
            probability = F.max_pool3d(probability, 2 * dilate + 1, stride=1, padding=dilate)
        grid = normalized_grid(points, encoding.extent).reshape(1, -1, 1, 1, 3).to(points.dtype)
        return F.grid_sample(probability, grid, mode="nearest", padding_mode="border",
                             align_corners=False).reshape(-1)


def default_config() -> OSSNetConfig:
    """The configuration we train (BraTS whole tumour from FLAIR and contrast T1)."""
    return OSSNetConfig()
