"""Evaluate trained weights on the validation split and write the model card.

    python -m MedNCASegmentLib.evaluation MedNCASegment/Resources/Models/mednca2d_hippocampus.pt

Every figure is dense, whole-volume and hard (thresholded): Dice and HD95 for the foreground
(anterior + posterior against background) and each class, per case, plus the quality score
NQM and how well it ranks good and bad results (Spearman correlation with Dice; a good score
correlates negatively). The card is written as JSON (for the model registry) and as a
readable Markdown page beside the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from EfficientSegmentationCommon.hardware import hardware_description
from EfficientSegmentationCommon.metrics import dice, hd95

from .data import CLASS_COLORS, CLASS_NAMES, load_case, read_split
from .fused_cell import network_dtype
from .inference import segment
from .model_io import load_model
from .training import DEFAULT_DATA, DEFAULT_SPLIT

REGIONS = {"foreground": (1, 2), "anterior": (1,), "posterior": (2,)}
# Results with a foreground Dice below this count as failures when choosing the NQM threshold.
ACCEPTABLE_DICE = 0.8
# The warning threshold sits this factor above the highest NQM of an acceptable validation result,
# so that validation-like inputs are not flagged and clearly less certain ones are.
THRESHOLD_MARGIN = 1.25


def evaluate_cases(model_path: Path, data: Path, case_ids: list[str], runs: int, seed: int) -> list[dict]:
    """Per-case metrics on the model's native 1 mm grid (the data's own grid)."""
    model, _ = load_model(model_path)
    rows = []
    for case_id in case_ids:
        case = load_case(data, case_id)
        started = time.perf_counter()
        result = segment(model, case.image, runs=runs, seed=seed)
        seconds = time.perf_counter() - started
        labels = result.labels()
        row = {"case": case_id, "seconds": round(seconds, 3),
               "nqm": [round(float(q), 5) for q in result.quality]}
        for region, values in REGIONS.items():
            predicted, truth = np.isin(labels, values), np.isin(case.labels, values)
            row[f"dice_{region}"] = round(dice(predicted, truth), 5)
            row[f"hd95_{region}"] = round(hd95(predicted, truth, (1.0, 1.0, 1.0)), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Mean, sd and median per metric, and NQM's rank correlation with foreground Dice."""
    summary: dict = {}
    for region in REGIONS:
        for metric in ("dice", "hd95"):
            values = np.array([row[f"{metric}_{region}"] for row in rows], dtype=float)
            finite = values[np.isfinite(values)]
            summary[f"{metric}_{region}"] = {"mean": round(float(finite.mean()), 4),
                                             "sd": round(float(finite.std()), 4),
                                             "median": round(float(np.median(finite)), 4)}
    nqm = np.array([float(np.mean(row["nqm"])) for row in rows])
    foreground = np.array([row["dice_foreground"] for row in rows])
    rho = spearmanr(nqm, foreground).statistic
    summary["nqm"] = {"mean": round(float(nqm.mean()), 5),
                      "spearman_with_foreground_dice": round(float(rho), 3),
                      "worst_case_by_dice": rows[int(foreground.argmin())]["case"],
                      "worst_case_by_nqm": rows[int(nqm.argmax())]["case"]}
    acceptable = nqm[foreground >= ACCEPTABLE_DICE]
    summary["quality_warning_threshold"] = round(float(acceptable.max() * THRESHOLD_MARGIN), 4) if len(acceptable) else None
    summary["seconds_per_volume"] = round(float(np.mean([row["seconds"] for row in rows])), 3)
    return summary


def write_card(model_path: Path, split_path: Path, runs: int, seed: int, rows: list[dict], summary: dict,
               training_hardware: str | None = None, training_note: str | None = None,
               structure_spread_threshold: float | None = None, max_spacing_mm: float | None = None) -> Path:
    """Write <weights>.json (registry) and <weights>.md (people) beside the weights.

    The JSON also carries what the registry needs to use the file as a user's own model
    (inputs, segments, spacing, quality warning thresholds). ``structure_spread_threshold`` comes
    from the robustness benchmark (``Testing/Benchmarks/robustness_benchmark.py``, which has the
    failures the validation split lacks), ``max_spacing_mm`` (mm) from
    ``Testing/Benchmarks/thick_slice_scans.py``; None leaves either out."""
    model, metadata = load_model(model_path)
    split = read_split(split_path)
    card = {
        "model": model_path.name,
        "method": "Med-NCA (Kalkhof et al., IPMI 2023), two-stage neural cellular automaton",
        "task": "hippocampus segmentation in T1 MRI: anterior (label 1) and posterior (label 2)",
        "inputs": ["T1"],
        "segments": [{"name": name, "label": i + 1, "color": list(color)}
                     for i, (name, color) in enumerate(zip(CLASS_NAMES, CLASS_COLORS, strict=True))],
        "spacing": [1.0, 1.0, 1.0],
        "orientation": "RAS",  # the MSD files' voxel order, which training reads as stored
        "quality_warning_threshold": summary["quality_warning_threshold"],
        **({"structure_spread_warning_threshold": structure_spread_threshold}
           if structure_spread_threshold is not None else {}),
        **({"max_spacing_mm": max_spacing_mm} if max_spacing_mm is not None else {}),
        "config": model.config.to_dict(),
        "parameters": model.parameter_count,
        "file_bytes": model_path.stat().st_size,
        "data": "Medical Segmentation Decathlon Task04 Hippocampus (Simpson et al. 2019; Antonelli et al. 2022), "
                "208 labelled cases as in ../shared/data/Task04_Hippocampus; CC-BY-SA 4.0",
        "split": {"file": str(split_path.name), "train": len(split["train"]), "validation": len(split["validation"])},
        "training": {**{k: metadata.get(k) for k in ("command", "seed", "iterations", "train_minutes", "threads")},
                     "note": training_note},
        "training_hardware": metadata.get("hardware") or training_hardware,
        "evaluation": {"runs": runs, "seed": seed, "grid": "native 1 mm", "metrics": "dense whole-volume hard Dice/HD95",
                       "inference": "every second run mirrored left-right; largest connected structure kept; "
                                    "fused cell, runs batched, network in "
                                    f"{str(network_dtype('auto')).removeprefix('torch.')} (inference.segment)",
                       "hardware": hardware_description()},
        "validation": summary,
        "per_case": rows,
    }
    json_path = model_path.with_suffix(".json")
    json_path.write_text(json.dumps(card, indent=1) + "\n")
    md_path = model_path.with_suffix(".md")
    md_path.write_text(card_markdown(card))
    return json_path


def card_markdown(card: dict) -> str:
    v = card["validation"]
    lines = [f"# Model card: {card['model']}", "", card["method"] + ".", "", f"Task: {card['task']}.", "",
             "## Data and split", "", card["data"] + ".",
             f"Split `{card['split']['file']}`: {card['split']['train']} training, "
             f"{card['split']['validation']} validation cases (fixed, committed).", "",
             "## Training", "", f"- command: `{card['training']['command']}`",
             f"- seed {card['training']['seed']}, {card['training']['iterations']} iterations, "
             f"{card['training']['train_minutes']} minutes on {card['training_hardware']}",
             *([f"- {card['training']['note']}"] if card["training"].get("note") else []),
             f"- parameters: {card['parameters']}; file size {card['file_bytes']} bytes",
             f"- configuration: `{json.dumps(card['config'])}`", "",
             f"## Validation ({card['split']['validation']} cases, {card['evaluation']['runs']} stochastic runs, "
             "dense whole-volume hard metrics)", "",
             "| region | Dice mean | Dice sd | Dice median | HD95 mean (mm) |", "|---|---|---|---|---|"]
    for region in REGIONS:
        d, h = v[f"dice_{region}"], v[f"hd95_{region}"]
        lines.append(f"| {region} | {d['mean']:.4f} | {d['sd']:.4f} | {d['median']:.4f} | {h['mean']:.2f} |")
    lines += ["", f"Quality score NQM (sum std / sum mean over {card['evaluation']['runs']} runs): mean "
                  f"{v['nqm']['mean']}; Spearman correlation with foreground Dice "
                  f"{v['nqm']['spearman_with_foreground_dice']} (negative: high NQM flags worse results). "
                  f"NQM threshold: {v['quality_warning_threshold']} ({THRESHOLD_MARGIN} x the "
                  f"highest NQM of a validation result with Dice >= {ACCEPTABLE_DICE})"
                  + ("; shown, not a warning, because the model has the spread threshold below."
                     if card.get("structure_spread_warning_threshold") is not None else "; above it a result is flagged."),
              *([f"Warning: the spread of the runs inside the segmented structure above "
                 f"{card['structure_spread_warning_threshold']} (chosen on clean and corrupted validation inputs "
                 "by Testing/Benchmarks/robustness_benchmark.py)."]
                if card.get("structure_spread_warning_threshold") is not None else []),
              *([f"Warning: an input with voxels coarser than {card['max_spacing_mm']} mm along any axis (thick "
                 "slices; chosen by Testing/Benchmarks/thick_slice_scans.py)."]
                if card.get("max_spacing_mm") is not None else []),
              f"Inference: {v['seconds_per_volume']} s per volume ({card['evaluation']['hardware']}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--training-hardware", default=None,
                        help="where the weights were trained, if their metadata does not say (default: this machine)")
    parser.add_argument("--training-note", default=None, help="anything the card should say about the training run")
    parser.add_argument("--structure-spread-threshold", type=float, default=None,
                        help="the spread-inside-the-structure warning threshold chosen by the robustness benchmark")
    parser.add_argument("--max-spacing-mm", type=float, default=None,
                        help="the coarsest voxel spacing without a warning, chosen by thick_slice_scans.py")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = evaluate_cases(args.weights, args.data, read_split(args.split)["validation"], args.runs, args.seed)
    summary = summarize(rows)
    print(json.dumps(summary, indent=1))
    print("card:", write_card(args.weights, args.split, args.runs, args.seed, rows, summary,
                                     args.training_hardware or hardware_description(), args.training_note,
                                     args.structure_spread_threshold, args.max_spacing_mm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
