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


def available_devices() -> list[str]:
    """The torch devices this process can use: "cpu", then "cuda:0", "cuda:1", ... (imports torch
    when it is installed)."""
    devices = ["cpu"]
    if cuda_available():
        import torch

        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return devices


def check_device(device: str) -> str:
    """The torch device string for ``device`` ("cpu", "cuda", "cuda:N"; "gpu" means "cuda"),
    checked once, up front, against what this computer has.

    Raises ValueError with a message naming the device and what is available, e.g. on a
    computer without CUDA: "Device 'cuda:1' cannot be used: PyTorch finds no CUDA GPU on this
    computer (PyTorch 2.13.0+cpu). Available: cpu."
    """
    text = (device or "cpu").strip().lower()
    if text == "gpu":
        text = "cuda"
    elif text.startswith("gpu:"):
        text = "cuda:" + text[4:]
    if text == "cpu":
        return "cpu"
    head, _, index = text.partition(":")
    if head != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"Unknown device '{device}'; use 'cpu' or 'cuda' (or 'cuda:N' for GPU number N).")
    available = available_devices()
    if len(available) == 1:
        raise ValueError(f"Device '{device}' cannot be used: {_no_cuda_reason()} Available: cpu.")
    if index and f"cuda:{index}" not in available:
        raise ValueError(f"Device '{device}' does not exist: this computer has {len(available) - 1} CUDA GPU(s). "
                         f"Available: {', '.join(available)}.")
    return text


def _no_cuda_reason() -> str:
    """Why torch cannot use CUDA here, for messages."""
    if not torch_installed():
        return "PyTorch is not installed."
    try:
        import torch
    except Exception as error:
        return f"PyTorch cannot be imported ({error})."
    if torch.version.cuda is None:
        return f"PyTorch finds no CUDA GPU on this computer (PyTorch {torch.__version__} is a CPU-only build)."
    return f"PyTorch finds no CUDA GPU on this computer (no GPU or no driver; PyTorch {torch.__version__})."
