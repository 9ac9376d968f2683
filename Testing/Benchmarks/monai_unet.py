"""MONAI's UNet as both baselines build and load it (2D: unet_baseline.py, 3D: unet3d_baseline.py).

MONAI is an optional dependency (the ``benchmark`` extra of pyproject.toml): it is imported when
a UNet is built, not when a baseline script is imported.
"""

from __future__ import annotations

from pathlib import Path

import torch


def build_unet(config: dict) -> torch.nn.Module:
    """A new MONAI UNet with the keyword arguments ``config``, initialised from torch's global generator."""
    from monai.networks.nets import UNet

    return UNet(**config)


def load_unet(config: dict, path: Path) -> torch.nn.Module:
    """The UNet with ``config`` and the state_dict saved at ``path``, on the CPU, ready for inference."""
    model = build_unet(config)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
