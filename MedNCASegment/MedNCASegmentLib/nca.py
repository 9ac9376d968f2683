"""Neural cellular automata for segmentation: the Med-NCA cell and its two-stage model.

One cell update is the same tiny network applied at every pixel (or voxel): it perceives its
neighbourhood through learned convolutions and proposes a change to its own state. Only a
random subset of cells (the fire rate) applies its change each step, so the automaton is
stochastic; running it several times yields a mean segmentation and a variance that tells how
much to trust it (M3D-NCA's quality score).

Two model types share this code:
- ``dims=2``: Med-NCA (Kalkhof et al., IPMI 2023), slice-wise. Perception is two full 3x3
  convolutions; the cell network is 3C -> hidden -> C.
- ``dims=3``: M3D-NCA (Kalkhof and Mukhopadhyay, MICCAI 2023). Perception is one depthwise
  3D convolution (7 in the global stage, 3 in the refinement stage); the cell network is
  2C -> hidden -> batch norm -> C.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

# A hook that restricts the refinement stage to a region (training on patches): it receives the
# upsampled state and the full-resolution image and returns both cropped the same way.
CropFunction = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class MedNCAConfig:
    """Everything that defines a Med-NCA model; stored beside the weights so a file is self-describing."""

    dims: int = 2
    input_channels: int = 3  # image channels held fixed: the slice and its neighbours (2D), the image (3D)
    num_classes: int = 2  # anterior, posterior hippocampus
    channels: int = 32  # state channels, inputs and classes included
    hidden: int = 128
    global_steps: int = 24
    refinement_steps: int = 16
    downscale: int = 4
    fire_rate: float = 0.5
    global_kernel: int = 3
    refinement_kernel: int = 3
    batch_norm: bool = False  # M3D-NCA uses it; the 2D cell does not

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MedNCAConfig":
        """Read a stored configuration; cards written before the stages were named global and
        refinement call them coarse and fine."""
        renamed = {LEGACY_CONFIG_KEYS.get(k, k): v for k, v in values.items()}
        known = {k: v for k, v in renamed.items() if k in cls.__dataclass_fields__}
        return cls(**known)


# Configuration keys and weight prefixes of files written before the stages were renamed.
LEGACY_CONFIG_KEYS = {"coarse_steps": "global_steps", "fine_steps": "refinement_steps",
                      "coarse_kernel": "global_kernel", "fine_kernel": "refinement_kernel"}
LEGACY_WEIGHT_PREFIXES = {"coarse.": "global_cell.", "fine.": "refinement_cell."}


def upgrade_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Weights of files written before the stages were renamed, under today's parameter names."""
    upgraded = {}
    for key, value in state_dict.items():
        for old, new in LEGACY_WEIGHT_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
        upgraded[key] = value
    return upgraded


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv2d if dims == 2 else nn.Conv3d


class NCACell(nn.Module):
    """One automaton update: perceive, compute a residual update, apply it to firing cells.

    The input channels are never updated (the update network has no outputs for them), which
    is both the paper's "channel 0 is written back" and cheaper than computing and discarding it.
    The last layer starts at zero, so an untrained cell is the identity.
    """

    def __init__(self, dims: int, channels: int, input_channels: int, hidden: int,
                 kernel_size: int, fire_rate: float, batch_norm: bool) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, not {dims}")
        if not 0 < input_channels < channels:
            raise ValueError("input_channels must be at least 1 and fewer than channels")
        conv = _conv(dims)
        self.dims = dims
        self.input_channels = input_channels
        self.fire_rate = fire_rate
        if dims == 2:
            # Two learned 3x3 convolutions of the whole state, computed as one convolution.
            self.perceive = conv(channels, 2 * channels, kernel_size, padding=kernel_size // 2,
                                 padding_mode="reflect")
            features = 3 * channels
        else:
            self.perceive = conv(channels, channels, kernel_size, padding=kernel_size // 2,
                                 padding_mode="reflect", groups=channels)
            features = 2 * channels
        self.fc0 = conv(features, hidden, 1)
        self.norm = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(hidden) if batch_norm else nn.Identity()
        self.fc1 = conv(hidden, channels - input_channels, 1, bias=False)
        nn.init.zeros_(self.fc1.weight)

    def forward(self, state: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mask_shape = (state.shape[0], 1, *state.shape[2:])
        fire = torch.rand(mask_shape, generator=generator, device=state.device, dtype=state.dtype)
        return self.update(state, (fire < self.fire_rate).to(state.dtype))

    def update(self, state: torch.Tensor, fire: torch.Tensor) -> torch.Tensor:
        """The next state where ``fire`` (batch, 1, *spatial) is 1.0; elsewhere the state as it is."""
        features = torch.cat([state, self.perceive(state)], dim=1)
        update = self.fc1(F.relu(self.norm(self.fc0(features))))
        fixed = state[:, : self.input_channels]
        return torch.cat([fixed, state[:, self.input_channels:] + update * fire], dim=1)


StepCallback = Callable[[str, int, int, torch.Tensor], None]


class MedNCA(nn.Module):
    """The two-stage automaton: global context on a downscaled image, then full-resolution refinement.

    Stage 1 starts from zeros with the downscaled image in the input channels and runs
    ``global_steps``; its whole state is upsampled (nearest), the input channels are replaced by
    the full-resolution image, and stage 2 runs ``refinement_steps`` with its own weights. The logits
    of the classes live in the channels right after the input channels.
    """

    def __init__(self, config: MedNCAConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.global_cell = NCACell(c.dims, c.channels, c.input_channels, c.hidden, c.global_kernel,
                              c.fire_rate, c.batch_norm)
        self.refinement_cell = NCACell(c.dims, c.channels, c.input_channels, c.hidden, c.refinement_kernel,
                            c.fire_rate, c.batch_norm)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, image: torch.Tensor, global_steps: int | None = None, refinement_steps: int | None = None,
                downscale: int | None = None, crop: CropFunction | None = None,
                generator: torch.Generator | None = None, on_step: StepCallback | None = None) -> torch.Tensor:
        """Logits of shape (batch, num_classes, *spatial) for an image (batch, input_channels, *spatial).

        Spatial sizes must be divisible by the downscale factor (the caller pads). ``crop``
        restricts stage 2 to a region (training on patches); the returned logits then cover it.
        ``on_step(stage, step, total, state)`` is called after every step (progress, preview, cancel).
        """
        c = self.config
        global_steps = c.global_steps if global_steps is None else global_steps
        refinement_steps = c.refinement_steps if refinement_steps is None else refinement_steps
        factor = c.downscale if downscale is None else downscale
        if image.shape[1] != c.input_channels:
            raise ValueError(f"expected {c.input_channels} image channels, got {image.shape[1]}")
        if any(size % factor for size in image.shape[2:]):
            raise ValueError(f"spatial size {tuple(image.shape[2:])} is not divisible by {factor}")

        small = F.avg_pool2d(image, factor) if c.dims == 2 else F.avg_pool3d(image, factor)
        state = torch.zeros((image.shape[0], c.channels, *small.shape[2:]), dtype=image.dtype, device=image.device)
        state[:, : c.input_channels] = small
        for step in range(global_steps):
            state = self.global_cell(state, generator)
            if on_step is not None:
                on_step("global", step + 1, global_steps, state)

        state = F.interpolate(state, scale_factor=factor, mode="nearest")
        full = image
        if crop is not None:
            state, full = crop(state, full)
        state = torch.cat([full, state[:, c.input_channels:]], dim=1)
        for step in range(refinement_steps):
            state = self.refinement_cell(state, generator)
            if on_step is not None:
                on_step("refinement", step + 1, refinement_steps, state)
        return state[:, c.input_channels: c.input_channels + c.num_classes]


def default_config(dims: int) -> MedNCAConfig:
    """The configurations we train: Med-NCA (2D, 2.5D input) and M3D-NCA (3D)."""
    if dims == 2:
        return MedNCAConfig()
    return MedNCAConfig(dims=3, input_channels=1, channels=16, hidden=64, global_steps=20, refinement_steps=12,
                        downscale=4, global_kernel=7, refinement_kernel=3, batch_norm=True)
