"""Getting PyTorch when a segmentation is first run, never at import time.

Slicer starts without torch, and torch must not be pip-installed blindly into Slicer's Python.
The extension depends on Slicer's PyTorch extension, whose ``PyTorchUtils`` module installs a
torch build that fits the computer (CPU or the installed CUDA driver), after asking the user.
Headless (pip install of this project) torch is a normal dependency and is simply there.
Nothing here imports torch unless it is asked whether CUDA can be used.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

MINIMUM_TORCH_VERSION = "2.0"


class TorchUnavailableError(RuntimeError):
    """torch is missing and cannot be installed here (no PyTorch extension)."""


def torch_installed() -> bool:
    """True when ``import torch`` would find a package (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def ensure_torch(ask_confirmation: bool = True) -> bool:
    """Make sure torch can be imported. True when it can; False when the user declined to install it.

    Inside Slicer a missing torch is installed through the PyTorch extension
    (``PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True, ...)``), which first asks
    the user to confirm. Raises ``TorchUnavailableError`` when torch is missing and the PyTorch
    extension is not installed either.
    """
    if torch_installed():
        return True
    try:
        pytorch_utils = importlib.import_module("PyTorchUtils")
    except ModuleNotFoundError as error:
        raise TorchUnavailableError(
            "This module needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, "
            "restart Slicer and segment again; it then installs PyTorch for this computer."
        ) from error
    torch_logic = pytorch_utils.PyTorchUtilsLogic()
    if torch_logic.torchInstalled():
        return True
    logging.info("PyTorch is required; installing it through the PyTorch extension (this may take minutes).")
    torch = torch_logic.installTorch(askConfirmation=ask_confirmation,
                                     torchVersionRequirement=f">={MINIMUM_TORCH_VERSION}")
    return torch is not None


def cuda_available() -> bool:
    """True when torch is installed and can use a CUDA GPU. Imports torch (only when installed)."""
    if not torch_installed():
        return False
    try:
        import torch
    except Exception as error:  # a broken installation: offer the CPU only
        logging.warning(f"PyTorch cannot be imported: {error}")
        return False
    return bool(torch.cuda.is_available())


def check_device(device: str) -> None:
    """Raise ValueError with a clear message when ``device`` cannot be used here."""
    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not cuda_available():
            raise ValueError("No CUDA GPU can be used by PyTorch on this computer; choose the CPU device.")
        return
    raise ValueError(f"Unknown device '{device}'; use 'cpu' or 'cuda'.")
