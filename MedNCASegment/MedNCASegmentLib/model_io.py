"""Saving and loading trained automata: one small file holds the configuration and the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .nca import MedNCA, MedNCAConfig, upgrade_state_dict


def save_model(path: Path, model: MedNCA, metadata: dict[str, Any]) -> None:
    """Write config, weights (float32) and free-form metadata (training facts) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": model.config.to_dict(),
               "state_dict": {k: v.detach().float().clone() for k, v in model.state_dict().items()},
               "metadata": metadata}
    torch.save(payload, path)


def load_model(path: Path, device: str = "cpu") -> tuple[MedNCA, dict[str, Any]]:
    """Load a model written by :func:`save_model`; raises ValueError naming the file if it is not one."""
    try:
        payload = torch.load(Path(path), map_location=device, weights_only=True)
        model = MedNCA(MedNCAConfig.from_dict(payload["config"]))
        model.load_state_dict(upgrade_state_dict(payload["state_dict"]))
    except (OSError, KeyError, RuntimeError, TypeError) as error:
        raise ValueError(f"{path} is not a Med-NCA model file: {error}") from error
    model.to(device).eval()
    return model, payload.get("metadata", {})
