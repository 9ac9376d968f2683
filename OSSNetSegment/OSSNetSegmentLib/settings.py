"""OSS-Net's user options, declared once (see ``EfficientSegmentationCommon.settings``).

The panel's parameter node, the ``ossnet-segment`` flags and the keyword arguments of
``OSSNetSegmentLogic.segment`` are all made from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from EfficientSegmentationCommon.settings import option, option_name, validate

from .resolution import DEFAULT_CHUNK_SIZE


@dataclass(frozen=True)
class OSSNetSettings:
    """How one OSS-Net run segments; frozen, validated on creation (ValueError naming the option).

    The output grid is the input's box at ``resolution`` times the input's resolution, or at
    ``output_spacing`` (mm) when that is given; ``resolution`` then stays 1.
    """

    model: str | None = option(None, "registry id or model file (.pt); default: the first OSS-Net model")
    resolution: float = option(1.0, "output resolution as a factor of the input's (2: twice as fine, 0.5: half)",
                               minimum=0.25, maximum=4.0)
    output_spacing: tuple[float, ...] | None = option(
        None, "output spacing in mm: one value (isotropic) or three (I, J, K); instead of resolution",
        panel=False, aliases=("--spacing",))
    chunk_size: int = option(DEFAULT_CHUNK_SIZE, "points decoded at once; bounds the memory (about 20 kB a point)",
                             minimum=1024, maximum=131072, aliases=("--chunk",), slider=True)
    device: str = option("cpu", "torch device: cpu, or cuda where this computer has it")

    def __post_init__(self) -> None:
        validate(self)
        if self.output_spacing is not None:
            spacing = np.atleast_1d(np.asarray(self.output_spacing, dtype=np.float64))
            if spacing.size not in (1, 3) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
                raise ValueError(f"{option_name('output_spacing')} must be one or three positive values in mm, "
                                 f"not {self.output_spacing}")
            if self.resolution != 1.0:
                raise ValueError(f"give {option_name('resolution')} or {option_name('output_spacing')}, not both")
            object.__setattr__(self, "output_spacing", tuple(float(s) for s in np.broadcast_to(spacing, (3,))))
