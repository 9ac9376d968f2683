"""What both models' training shares: the committed split files and the learning-rate schedule.

Plain Python (no torch), so that the split format and the schedule are defined once for
Med-NCA, OSS-Net and the benchmark baselines.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

# The schedule decays to this fraction of the peak learning rate, not to zero.
LR_FLOOR = 0.02


def read_split(path: Path) -> dict[str, list[str]]:
    """A fixed train/validation split (JSON with "train" and "validation" case-id lists);
    refuses one that puts a case on both sides."""
    split = json.loads(Path(path).read_text())
    overlap = set(split["train"]) & set(split["validation"])
    if overlap:
        raise ValueError(f"split {path} has cases in both training and validation: {sorted(overlap)[:5]}")
    return split


def cosine_decay(fraction: float, peak: float) -> float:
    """Learning rate after ``fraction`` (0..1) of the schedule: a half cosine from ``peak`` to the floor."""
    fraction = min(max(fraction, 0.0), 1.0)
    return peak * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * fraction)))


def warmup_cosine(iteration: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` iterations, then :func:`cosine_decay` over the rest."""
    if iteration < warmup:
        return peak * (iteration + 1) / warmup
    return cosine_decay((iteration - warmup) / max(1, total - warmup), peak)
