"""Where a figure was measured: model cards and benchmarks record the machine beside each number."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def hardware_description() -> str:
    """CPU model, core count, torch version and thread count of this process (imports torch)."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
