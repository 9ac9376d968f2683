"""Evaluate trained OSS-Net weights on the validation split and write the model card.

    python -m OSSNetSegmentLib.evaluation OSSNetSegment/Resources/Models/ossnet_brats_wholetumour.pt

Every figure is dense and whole-volume: the segmentation covers every voxel of the output grid
and Dice, IoU and HD95 count every voxel (the reference code computed its validation Dice on
sampled points). Reported per validation case:
- the input's own 1 mm grid (coarse-to-fine inference, as the Slicer module runs it), with the
  fraction of voxels decoded and the time; and, for comparison, single-level decoding of every
  point the coarse head flags (agreement and time);
- resolution independence: a 2 mm output of the 1 mm input; the input degraded to 2 mm and
  segmented back on the 1 mm grid; a 0.5 mm output (super-resolution). Where the output grid
  differs from the labels' grid, the reference is the expert labels read at the output voxel
  centres (nearest voxel).
The training cases are segmented too (how well the model fits what it saw). The card is written
as JSON (for the model registry) and as a readable Markdown page beside the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from EfficientSegmentationCommon.hardware import hardware_description
from EfficientSegmentationCommon.metrics import dice, hd95

from .data import REGIONS, SEGMENT_COLOR, SEGMENT_NAME, Case, load_case, read_split
from .inference import SegmentationResult, segment
from .model_io import load_model
from .network import OSSNet
from .preprocessing import centred_positions, resample_centred
from .training import DEFAULT_DATA, DEFAULT_SPLIT

MODEL_ID = "ossnet-brats-wholetumour"
LABEL_NAMES = {1: "necrosis", 2: "edema", 3: "non-enhancing tumour", 4: "enhancing tumour"}
DIFFERENCES = [
    "Activation: SiLU instead of the Pade activation unit (the reference needs a custom CUDA kernel, which cannot run on a CPU).",
    "Coordinates: physical, mm from the volume's centre / 100 mm, instead of voxel indices; the 7x7x7 patch is read at "
    "1 mm steps and the encoder reads the volume resampled to 2 mm, whatever the input spacing, so one set of weights "
    "serves any spacing and size.",
    "Per-block latents: each encoder block's feature map is read at the query point (trilinear) instead of being pooled "
    "to a fixed 8x8x5 grid and flattened (which ties the weights to one volume size); the global latent is the mean "
    "of the deepest features.",
    "Width: about 0.5M parameters (encoder 16-24-32-48 channels, patch encoder 64, decoder width 96, 5 blocks) "
    "instead of 8.7M, to train and run on a CPU.",
    "Inputs: FLAIR and contrast T1 only (the sample has no T1 and T2); one volume and 8192 points per iteration; "
    "AdamW with cosine decay instead of RAdam + Lookahead; augmentation adds crops and scaling to flips, brightness "
    "and noise; half of the points lie within 3 voxels of the tumour border.",
    "Coarse head on an 8 mm grid (the reference: 8x8x5 cells of 32 mm); inference decodes, on strides 4, 2, 1, only "
    "points in cells it flags (dilated by one cell) and then only points within one coarser point of the border.",
    "Weights: the final iteration's, not the best validation epoch (with one validation case, picking the best "
    "epoch would flatter the reported Dice).",
]


def labels_on_grid(labels: np.ndarray, spacing: tuple[float, ...], shape: tuple[int, ...],
                   out_spacing: tuple[float, ...]) -> np.ndarray:
    """Labels (KJI, spacing IJK) read at the centres of another centred grid (nearest voxel)."""
    spacing_kji, out_kji = spacing[::-1], out_spacing[::-1]
    index = []
    for n, s, m, t in zip(labels.shape, spacing_kji, shape, out_kji, strict=True):
        position = centred_positions(m, t)
        index.append(np.clip(np.round(position / s + (n - 1) / 2).astype(int), 0, n - 1))
    return labels[np.ix_(*index)]


def scores(result: SegmentationResult, truth: np.ndarray, with_hd95: bool = True) -> dict:
    predicted = result.labels > 0
    union = np.logical_or(predicted, truth).sum()
    return {"dice": round(dice(predicted, truth), 4),
            "iou": round(float(np.logical_and(predicted, truth).sum() / union) if union else 1.0, 4),
            "hd95_mm": round(hd95(predicted, truth, result.spacing), 2) if with_hd95 else None,
            "decoded_fraction": round(result.decoded_fraction, 5), "seconds": result.seconds,
            "output_shape": list(result.shape), "output_spacing": list(result.spacing)}


def degrade(case: Case, spacing: float) -> tuple[list[np.ndarray], tuple[float, float, float]]:
    """The case's images as a scan of ``spacing`` mm would show them (smoothed and resampled)."""
    volume = torch.from_numpy(np.stack(case.images))
    low, low_spacing = resample_centred(volume, tuple(reversed(case.spacing)), spacing)
    return [c.numpy() for c in low], tuple(reversed(low_spacing))


def evaluate_case(model: OSSNet, case: Case, full: bool) -> dict:
    truth = case.target
    row: dict = {"case": case.case_id}
    native = segment(model, case.images, case.spacing)
    row["native"] = scores(native, truth)
    predicted = native.labels > 0
    row["native"]["precision"] = round(float((predicted & truth).sum() / max(1, predicted.sum())), 4)
    # Which parts of the tumour are missed: the share of each expert label inside the segmentation.
    row["native"]["recall_by_label"] = {name: round(float((predicted & (case.labels == value)).sum()
                                                          / max(1, (case.labels == value).sum())), 4)
                                        for value, name in LABEL_NAMES.items()}
    row["native"]["levels"] = [{"stride": l.stride, "points": l.points, "decoded": l.decoded, "seconds": l.seconds}
                               for l in native.levels]
    if full:
        single = segment(model, case.images, case.spacing, levels=1)
        row["single_level"] = {**scores(single, truth), "agreement_dice_with_coarse_to_fine":
                               round(dice(single.labels > 0, native.labels > 0), 4)}
        coarse = segment(model, case.images, case.spacing, output_spacing=tuple(s * 2 for s in case.spacing))
        row["output_2mm"] = scores(coarse, labels_on_grid(truth, case.spacing, coarse.shape, coarse.spacing))
        images, spacing = degrade(case, 2.0)
        upsampled = segment(model, images, spacing, output_spacing=case.spacing)
        row["input_2mm_output_1mm"] = scores(upsampled, labels_on_grid(truth, case.spacing, upsampled.shape,
                                                                       upsampled.spacing))
        row["input_2mm_output_1mm"]["agreement_dice_with_native"] = (
            round(dice(upsampled.labels > 0, native.labels > 0), 4) if upsampled.shape == native.shape else None)
        fine = segment(model, case.images, case.spacing, output_spacing=tuple(s / 2 for s in case.spacing))
        # (HD95 would need distance maps of the 8x larger grid; Dice is enough here.)
        row["output_0.5mm"] = scores(fine, labels_on_grid(truth, case.spacing, fine.shape, fine.spacing), with_hd95=False)
    print(json.dumps(row), flush=True)
    return row


def write_card(model_path: Path, split_path: Path, validation: list[dict], training: list[dict],
               max_spacing_mm: dict[str, float] | None = None) -> Path:
    """Write <weights>.json (registry) and <weights>.md (people) beside the weights.
    ``max_spacing_mm`` (input name -> mm), the coarsest voxel spacing each input may have without
    a warning, comes from ``Testing/Benchmarks/thick_slice_scans.py --model ossnet``; None leaves
    it out."""
    model, metadata = load_model(model_path)
    split = read_split(split_path)
    mean = lambda rows, key, metric: round(float(np.mean([r[key][metric] for r in rows])), 4)  # noqa: E731
    card = {
        "id": MODEL_ID,
        "title": "OSS-Net whole brain tumour (FLAIR + contrast T1 MRI)",
        "model": model_path.name,
        "method": "ossnet",
        "method_description": "OSS-Net variant C (Reich et al., BMVC 2021): occupancy network for segmentation with "
                              "3D residual CNN encoder, coarse auxiliary head, 7x7x7 local patches and a residual "
                              "decoder with conditional batch norm; coarse-to-fine inference at any resolution",
        "task": "brain tumour (glioma) whole tumour: necrosis, edema, non-enhancing and enhancing tumour together",
        "inputs": list(model.config.inputs),
        "input_requirements": "skull-stripped FLAIR and contrast-enhanced T1 on one grid, background constant "
                              "(BraTS-style); read in the voxel order of the BraTS files (LPS; registry "
                              "orientation) whatever the input file uses",
        "segments": [{"name": SEGMENT_NAME, "label": 1, "color": list(SEGMENT_COLOR),
                      "labels_in_data": list(REGIONS[SEGMENT_NAME])}],
        "spacing": [1.0, 1.0, 1.0],
        "orientation": "LPS",  # the BraTS files' voxel order, which training reads as stored
        **({"max_spacing_mm": max_spacing_mm} if max_spacing_mm is not None else {}),
        "output_resolution": "any output resolution (output spacing in mm, or a factor of the input spacing)",
        "config": model.config.to_dict(),
        "parameters": model.parameter_count,
        "file_bytes": model_path.stat().st_size,
        "differences_from_reference": DIFFERENCES,
        "data": "BraTS 2013 high-grade glioma, five cases as shipped for BraTS 2015 in the deepmedic/deepmedic "
                "repository (Menze et al., IEEE TMI 2015); CC BY-NC-SA 3.0 (non-commercial), which also binds these weights",
        "license": "CC-BY-NC-SA-3.0 (trained on BraTS data)",
        "split": {"file": split_path.name, "train": split["train"], "validation": split["validation"]},
        "training": {k: metadata.get(k) for k in ("command", "seed", "iterations", "train_minutes", "cpu_minutes",
                                                  "threads", "settings")},
        "training_hardware": metadata.get("hardware"),
        "evaluation": {"metrics": "dense whole-volume Dice, IoU, HD95 (every voxel of the output grid)",
                       "hardware": hardware_description(), "date": time.strftime("%Y-%m-%d")},
        "metrics": {"validation_dice": mean(validation, "native", "dice"),
                    "validation_iou": mean(validation, "native", "iou"),
                    "validation_hd95_mm": mean(validation, "native", "hd95_mm"),
                    "validation_decoded_fraction": mean(validation, "native", "decoded_fraction"),
                    "seconds_per_volume": mean(validation, "native", "seconds"),
                    "training_dice": mean(training, "native", "dice") if training else None},
        "validation": validation,
        "training_cases": training,
        "published_reference": "OSS-Net C on BraTS 2020 whole tumour (GPU, 4 modalities, 369 cases): Dice 0.8842, IoU 0.7991",
    }
    json_path = model_path.with_suffix(".json")
    json_path.write_text(json.dumps(card, indent=1) + "\n")
    model_path.with_suffix(".md").write_text(card_markdown(card))
    return json_path


def card_markdown(card: dict) -> str:
    m, t = card["metrics"], card["training"]
    lines = [f"# Model card: {card['title']}", "", f"`{card['model']}` (id `{card['id']}`). {card['method_description']}.", "",
             f"Task: {card['task']}. Inputs: {', '.join(card['inputs'])} ({card['input_requirements']}). "
             f"Output: label 1 = {card['segments'][0]['name']}, at {card['output_resolution']}.", "",
             "## Data and split", "", card["data"] + ".",
             f"Split `{card['split']['file']}` (fixed, committed): training {', '.join(card['split']['train'])}; "
             f"validation {', '.join(card['split']['validation'])}.", "",
             "## Training", "", f"- command: `{t['command']}`",
             f"- seed {t['seed']}, {t['iterations']} iterations, {t['train_minutes']} minutes wall clock "
             f"({t['cpu_minutes']} CPU minutes, {t['threads']} thread, sharing the machine) on {card['training_hardware']}",
             f"- parameters: {card['parameters']}; file size {card['file_bytes']} bytes",
             f"- configuration: `{json.dumps(card['config'])}`", "",
             "## Differences from the reference implementation", ""]
    lines += [f"- {d}" for d in card["differences_from_reference"]]
    lines += ["", "## Validation (dense, whole volume, every voxel)", "",
              "| case | grid | Dice | IoU | HD95 (mm) | decoded fraction | seconds |", "|---|---|---|---|---|---|---|"]
    for row in card["validation"] + card["training_cases"]:
        label = row["case"] + (" (training)" if row in card["training_cases"] else "")
        for key, name in (("native", "input 1 mm -> 1 mm"), ("single_level", "1 mm, single level"),
                          ("output_2mm", "input 1 mm -> 2 mm"), ("input_2mm_output_1mm", "input 2 mm -> 1 mm"),
                          ("output_0.5mm", "input 1 mm -> 0.5 mm")):
            if key in row:
                r = row[key]
                hd = "n/a" if r["hd95_mm"] is None else r["hd95_mm"]
                lines.append(f"| {label} | {name} | {r['dice']:.4f} | {r['iou']:.4f} | {hd} | "
                             f"{r['decoded_fraction']:.4f} | {r['seconds']} |")
    for row in card["validation"]:
        native = row["native"]
        recall = ", ".join(f"{name} {value:.2f}" for name, value in native["recall_by_label"].items())
        lines += ["", f"{row['case']}: precision {native['precision']:.3f}; share of each expert label inside the "
                      f"segmentation: {recall}."]
    if card.get("max_spacing_mm") is not None:
        limits = ", ".join(f"{name} {mm:g} mm" for name, mm in card["max_spacing_mm"].items())
        lines += ["", f"Warning: an input with voxels coarser than {limits} along any axis (thick slices; chosen by "
                      "Testing/Benchmarks/thick_slice_scans.py --model ossnet)."]
    lines += ["", f"Mean validation Dice {m['validation_dice']} (IoU {m['validation_iou']}); the coarse-to-fine "
                  f"inference decoded {m['validation_decoded_fraction']:.2%} of the output voxels; "
                  f"{m['seconds_per_volume']} s per volume on {card['evaluation']['hardware']}.",
              f"Published for comparison: {card['published_reference']}. With four training cases this model is a "
              "demonstration of the method on a CPU, not a clinical tool.", ""]
    return "\n".join(lines)


def _spacing_per_input(text: str) -> dict[str, float]:
    """``FLAIR=5,T1c=3`` -> {"FLAIR": 5.0, "T1c": 3.0} (argparse type)."""
    try:
        pairs = [item.split("=") for item in text.split(",")]
        limits = {name.strip(): float(mm) for name, mm in pairs}
    except ValueError:
        limits = {}
    if not limits or any(mm <= 0 for mm in limits.values()):
        raise argparse.ArgumentTypeError(f"give INPUT=MM pairs with positive mm, e.g. FLAIR=5,T1c=3, not {text!r}")
    return limits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-training-cases", action="store_true")
    parser.add_argument("--max-spacing-mm", type=_spacing_per_input, default=None, metavar="INPUT=MM,...",
                        help="the coarsest voxel spacing of each input without a warning (e.g. FLAIR=5,T1c=3), "
                             "chosen by thick_slice_scans.py --model ossnet")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.weights)
    split = read_split(args.split)
    inputs = model.config.inputs
    validation = [evaluate_case(model, load_case(args.data, i, inputs), full=True) for i in split["validation"]]
    training = [] if args.skip_training_cases else [evaluate_case(model, load_case(args.data, i, inputs), full=False)
                                                    for i in split["train"]]
    print("card:", write_card(args.weights, args.split, validation, training, args.max_spacing_mm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
