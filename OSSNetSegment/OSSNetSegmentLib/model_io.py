"""Saving and loading trained OSS-Net models: one small file holds the configuration and the weights."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .network import OSSNet, OSSNetConfig


def save_model(path: Path, model: OSSNet, metadata: dict[str, Any]) -> None:
    """Write config, weights (float32; batch-norm running statistics included) and free-form
    metadata (training facts) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": "ossnet-1", "config": model.config.to_dict(),
               "state_dict": {k: (v.detach().float().clone() if v.is_floating_point() else v.detach().clone())
                              for k, v in model.state_dict().items()},
               "metadata": metadata}
    torch.save(payload, path)


def load_model(path: Path, device: str = "cpu") -> tuple[OSSNet, dict[str, Any]]:
    """Load a model written by :func:`save_model`, in eval mode; raises ValueError naming the
    file if it is not one."""
    try:
        payload = torch.load(Path(path), map_location=device, weights_only=True)
        if payload.get("format") != "ossnet-1":
            raise KeyError("format")
        model = OSSNet(OSSNetConfig.from_dict(payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except (OSError, EOFError, KeyError, RuntimeError, TypeError, AttributeError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path} is not an OSS-Net model file: {error}") from error
    model.to(device).eval()
    return model, payload.get("metadata", {})
