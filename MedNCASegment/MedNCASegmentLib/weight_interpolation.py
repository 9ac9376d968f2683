"""Weight-space interpolation between a model and a fine-tuned copy of it (WiSE-FT).

Fine-tuning with MRI artefacts made the automaton more robust but cost clean Dice in every
candidate that moved far enough (Testing/Benchmarks/RESULTS.md, issue 14). Wortsman et al.
("Robust fine-tuning of zero-shot models", CVPR 2022) showed that the weights on the straight
line between a model and its fine-tuned copy often keep the first's accuracy and most of the
second's robustness, because both lie in one basin of the loss. This module writes such a point
as an ordinary model file, so the benchmark and the modules use it like any other.

    python -m MedNCASegmentLib.weight_interpolation START.pt END.pt --alpha 0.5 --output OUT.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .model_io import load_model, save_model
from .nca import MedNCA

# What the model card reports of the training (``evaluation.write_card``), taken from the fine-tuning.
TRAINING_KEYS = ("seed", "iterations", "train_minutes", "threads", "hardware")


def interpolate(start: Path, end: Path, alpha: float) -> tuple[MedNCA, dict]:
    """The model with weights ``(1 - alpha) * start + alpha * end``, and metadata naming both.

    Args:
        start: model file (:func:`model_io.save_model`) the fine-tuning started from.
        end: model file fine-tuned from ``start`` (same configuration).
        alpha: position on the line, 0 (``start``) to 1 (``end``).

    Returns:
        The interpolated model (evaluation mode) and its metadata: ``interpolation`` (both paths,
        ``alpha``, the method's source), each end's own metadata, and the fine-tuning's
        ``seed``, ``iterations``, ``train_minutes``, ``threads`` and ``hardware`` (``end``'s:
        the training that the model card reports).

    Raises:
        ValueError: ``alpha`` outside [0, 1], a file that is not a model, or two models of
            different configurations (their weights do not correspond).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    model, start_metadata = load_model(start)
    end_model, end_metadata = load_model(end)
    if model.config != end_model.config:
        raise ValueError(f"{start} and {end} have different configurations "
                         f"({model.config.to_dict()} against {end_model.config.to_dict()}); "
                         "only a model and a fine-tuned copy of it can be interpolated")
    end_state = end_model.state_dict()
    model.load_state_dict({name: (1.0 - alpha) * value + alpha * end_state[name]
                           for name, value in model.state_dict().items()})
    metadata = {**{key: end_metadata[key] for key in TRAINING_KEYS if key in end_metadata},
                "interpolation": {"start": str(start), "end": str(end), "alpha": alpha,
                                  "method": "WiSE-FT (Wortsman et al., CVPR 2022)"},
                "start": start_metadata, "end": end_metadata}
    return model, metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("start", type=Path, help="the model the fine-tuning started from")
    parser.add_argument("end", type=Path, help="the fine-tuned model")
    parser.add_argument("--alpha", type=float, required=True, help="0 gives START, 1 gives END")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        model, metadata = interpolate(args.start, args.end, args.alpha)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # The fine-tuning's command, then this one: the two steps that make the file.
    steps = [metadata["end"].get("command"), "python -m MedNCASegmentLib.weight_interpolation "
             + " ".join(argv if argv is not None else sys.argv[1:])]
    metadata["command"] = " && ".join(step for step in steps if step)
    save_model(args.output, model, metadata)
    print(f"wrote {args.output} (alpha {args.alpha})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
