"""OSS-Net at three output resolutions against a 3D UNet, side by side in one run; prints a table.

    OMP_NUM_THREADS=1 python Testing/Benchmarks/ossnet_benchmark.py --threads 1 \
        --unet runs/unet3d_baseline/unet3d_baseline.pt \
        --weights OSSNetSegment/Resources/Models/ossnet_brats_wholetumour.pt \
        --matched-weights runs/ossnet/weights_003000.pt --json runs/ossnet_benchmark.json

On one 240x240x155 BraTS case (default: the validation case of brats_split.json, pat0006), each
configuration in its own fresh process:
- baseline: a process that imports the same modules and loads the case, and does nothing else
  (the floor every other row stands on, so that differences and ratios mean something);
- UNet 1x: the 3D UNet baseline (Testing/Benchmarks/unet3d_baseline.py), one forward pass over
  the whole volume on the 1 mm grid;
- OSS-Net 1x, 2x finer (0.5 mm output, spacing factor 0.5) and 0.5x (2 mm output, spacing
  factor 2) with ``--weights``; with ``--matched-weights`` also OSS-Net 1x with weights saved
  when its training had used about the UNet's CPU budget.

Columns: output grid, Dice (dense: every voxel, whole tumour, on the case's 1 mm grid: a finer
output is read back at the 1 mm voxel centres and a coarser one upsampled to them, nearest
voxel, ``OSSNetSegmentLib.evaluation.labels_on_grid``; for the 0.5 mm output that is one of the
eight 0.5 mm voxels inside each 1 mm voxel), wall seconds and CPU seconds of the
segmentation call (normalisation to labels), peak resident memory, and the points the decoder
was queried at (the UNet computes every voxel). Also printed: OSS-Net 2x peak / UNet 1x peak.

Memory: each measuring process (this script with ``--worker``) imports the same modules (torch,
MONAI, the OSS-Net library, the UNet baseline) and loads the case before it measures anything.
"peak RSS" is the process's peak resident set size (``ru_maxrss``) right after the
segmentation (before the metrics); the parent also records each child's whole-life peak from
``os.wait4`` (``resource``'s per-child usage; ``RUSAGE_CHILDREN`` would give only the largest
child so far) in the JSON. Times are wall clock (``perf_counter``) with ``--threads`` torch
threads; other processes on the machine slow them down, CPU seconds (``process_time``) much less.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from measurement import current_mib, measure_in_fresh_process, peak_mib, publish, serve_worker, training_facts

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_WEIGHTS = REPO / "OSSNetSegment" / "Resources" / "Models" / "ossnet_brats_wholetumour.pt"
DEFAULT_SPLIT = REPO / "OSSNetSegment" / "Resources" / "Models" / "brats_split.json"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "BraTS_sample"
# Name -> OSS-Net spacing factor (output spacing = input spacing x factor).
OSSNET_FACTORS = {"ossnet-0.5x": 2.0, "ossnet-1x": 1.0, "ossnet-2x": 0.5}
CONFIGS = ("unet", "ossnet-0.5x", "ossnet-1x", "ossnet-2x")
# The libraries a worker imports.
SOURCES = (REPO / "Resources" / "Python", REPO / "MedNCASegment", REPO / "OSSNetSegment")


# ---------------------------------------------------------------------------------------------
# The measuring child process

def parse_crop(text: str | None) -> tuple[slice, slice, slice] | None:
    """``"K0:K1,J0:J1,I0:I1"`` (voxels) -> a KJI box; None for no crop."""
    if not text:
        return None
    parts = [p.split(":") for p in text.split(",")]
    if len(parts) != 3 or any(len(p) != 2 for p in parts):
        raise ValueError(f"crop must look like K0:K1,J0:J1,I0:I1, got {text!r}")
    return tuple(slice(int(a), int(b)) for a, b in parts)


def worker(spec: dict) -> dict:
    """Run one measurement described by ``spec`` in this (fresh) process and return its result."""
    # The same imports for every measurement (the baseline included), so absolute figures compare.
    import torch

    sys.path.insert(0, str(HERE))
    import unet3d_baseline  # noqa: E402
    for module in ("monai.inferers", "monai.networks.nets"):  # unet3d_baseline imports them when used
        importlib.import_module(module)
    from EfficientSegmentationCommon.hardware import hardware_description
    from EfficientSegmentationCommon.metrics import dice
    from OSSNetSegmentLib.data import load_case
    from OSSNetSegmentLib.evaluation import labels_on_grid
    from OSSNetSegmentLib.inference import segment
    from OSSNetSegmentLib.model_io import load_model

    torch.set_num_threads(spec["threads"])
    result: dict = {"imports_peak_mib": peak_mib(), "threads": torch.get_num_threads(),
                    "hardware": hardware_description()}
    case = load_case(Path(spec["data"]), spec["case"], unet3d_baseline.INPUTS)
    crop = parse_crop(spec.get("crop"))
    if crop is not None:
        case = case.crop(crop)
    truth = case.target
    result.update(shape=list(truth.shape), spacing=list(case.spacing), loaded_peak_mib=peak_mib(),
                  loaded_rss_mib=current_mib())
    kind = spec["task"]
    if kind == "baseline":
        result["peak_mib"] = peak_mib()
        return result

    if kind == "unet":
        model = unet3d_baseline.load_unet(Path(spec["weights"]))
        result["before_inference_rss_mib"] = current_mib()
        started, cpu_started = time.perf_counter(), time.process_time()
        labels, mode = unet3d_baseline.segment_unet3d(model, case.images, spec.get("unet_mode", "auto"))
        result.update(seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu_started,
                      peak_mib=peak_mib(), mode=mode)
        result.update(output_shape=list(labels.shape), output_spacing=list(case.spacing),
                      decoded_points=int(labels.size), decoded_fraction=1.0)
        predicted = labels > 0
    else:
        model, metadata = load_model(Path(spec["weights"]))
        result["weights"] = spec["weights"]
        result["metadata"] = {k: metadata[k] for k in ("iteration", "iterations", "train_minutes", "cpu_minutes",
                                                       "threads", "seed") if metadata.get(k) is not None}
        result["before_inference_rss_mib"] = current_mib()
        started, cpu_started = time.perf_counter(), time.process_time()
        output = segment(model, case.images, case.spacing, output_spacing=tuple(s * spec["factor"] for s in case.spacing), chunk_size=spec["chunk_size"])
        result.update(seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu_started,
                      peak_mib=peak_mib())
        result.update(output_shape=list(output.shape), output_spacing=list(output.spacing),
                      decoded_points=output.decoded_points, decoded_fraction=output.decoded_fraction,
                      levels=[{"stride": level.stride, "points": level.points, "decoded": level.decoded,
                               "seconds": level.seconds} for level in output.levels])
        # On the case's own grid: the output read at the 1 mm voxel centres (nearest output voxel).
        predicted = labels_on_grid(output.labels, output.spacing, truth.shape, case.spacing) > 0
        # For reference, as the model card reports it: the expert labels read on the output grid.
        result["dice_output_grid"] = dice(output.labels > 0,
                                          labels_on_grid(truth, case.spacing, output.shape, output.spacing))
    result["dice"] = dice(predicted, truth)
    result["predicted_voxels"], result["truth_voxels"] = int(predicted.sum()), int(truth.sum())
    result["parameters"] = int(sum(p.numel() for p in model.parameters()))
    return result


def measure(spec: dict, threads: int, label: str) -> dict:
    """Run one measurement in a fresh Python process and return its result (plus the child's
    whole-life peak RSS as the kernel reports it to the parent)."""
    measured = measure_in_fresh_process(Path(__file__).resolve(), spec, threads, label, SOURCES)
    return {**measured.result, "process_peak_mib": measured.process_peak_mib,
            "process_seconds": measured.process_seconds}


# ---------------------------------------------------------------------------------------------
# The table

def _grid(row: dict) -> str:
    shape = "x".join(str(n) for n in reversed(row["output_shape"]))  # I x J x K, as the volume is usually named
    spacing = row["output_spacing"][0]
    return f"{shape} ({spacing:g} mm)"


def render(report: dict) -> str:
    base = report["rows"]["baseline"]
    shape = "x".join(str(n) for n in reversed(base["shape"]))
    lines = [f"## {report['case']} ({shape}, 1 mm), {report['threads']} thread(s)", "",
             "| method | output grid | Dice (dense, 1 mm) | seconds | CPU seconds | peak RSS MiB | peak - baseline MiB "
             "| points decoded | of output voxels |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| baseline (imports + case loaded) | - | - | - | - | {base['peak_mib']:,.0f} | 0 | - | - |"]
    for name, row in report["rows"].items():
        if name == "baseline":
            continue
        lines.append(f"| {row['label']} | {_grid(row)} | {row['dice']:.4f} | {row['seconds']:.1f} | "
                     f"{row['cpu_seconds']:.1f} | {row['peak_mib']:,.0f} | {row['peak_mib'] - base['peak_mib']:,.0f} | "
                     f"{row['decoded_points']:,} | {row['decoded_fraction']:.2%} |")
    lines.append("")
    for key, text in report.get("ratios", {}).items():
        lines.append(f"- {key}: {text}")
    if "unet" in report["rows"]:
        lines.append(f"- UNet inference mode: {report['rows']['unet'].get('mode')} "
                     "(whole = one forward pass over the padded volume)")
    lines.append("")
    lines += ["| weights | training iterations | CPU minutes | wall minutes | threads |", "|---|---:|---:|---:|---:|"]
    for name, facts in report.get("training", {}).items():
        wall = facts.get("wall_minutes", facts.get("train_minutes"))
        lines.append(f"| {name} | {facts.get('iterations', facts.get('iteration'))} | {facts.get('cpu_minutes', '?')} | "
                     f"{'?' if wall is None else wall} | {facts.get('threads', '?')} |")
    lines += ["", f"Hardware: {report.get('hardware', '?')}."]
    return "\n".join(lines)


def ratios(rows: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    base = rows["baseline"]["peak_mib"]
    if "unet" in rows:
        unet = rows["unet"]["peak_mib"]
        for name in ("ossnet-2x", "ossnet-1x", "ossnet-0.5x"):
            if name in rows:
                peak = rows[name]["peak_mib"]
                out[f"{rows[name]['label']} peak / UNet 1x peak"] = (
                    f"{peak / unet:.2f} ({peak:,.0f} / {unet:,.0f} MiB); above the baseline: "
                    f"{(peak - base) / max(unet - base, 1e-9):.2f} ({peak - base:,.0f} / {unet - base:,.0f} MiB)")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if serve_worker(argv, worker):
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", type=Path, default=None, help="3D UNet state_dict (unet3d_baseline.py); "
                        "required unless --configs leaves out unet")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="OSS-Net model file")
    parser.add_argument("--matched-weights", type=Path, default=None,
                        help="OSS-Net weights saved when its training had used about the UNet's CPU budget "
                             "(a weights_NNNNNN.pt of the training work dir): adds an OSS-Net 1x row with them")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    parser.add_argument("--case", default=None, help="case id (default: the split's first validation case)")
    parser.add_argument("--crop", default=None, help="K0:K1,J0:J1,I0:I1 voxel box of the case (smoke tests only)")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS),
                        help="what to measure besides the baseline (default: all)")
    parser.add_argument("--chunk-size", type=int, default=8192, help="OSS-Net decoder points per call")
    parser.add_argument("--unet-mode", choices=("auto", "whole", "sliding"), default="auto",
                        help="auto: whole volume, sliding windows only if it cannot be allocated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args(argv)
    if "unet" in args.configs and args.unet is None:
        parser.error("--unet is required to measure the UNet (or leave it out of --configs)")
    for path in (args.unet, args.weights, args.matched_weights):
        if path is not None and not path.exists():
            parser.error(f"{path} does not exist")
    parse_crop(args.crop)
    case = args.case
    if case is None:
        sys.path.insert(0, str(REPO / "Resources" / "Python"))
        from EfficientSegmentationCommon.training import read_split

        case = read_split(args.split)["validation"][0]

    common = {"task": "ossnet", "data": str(args.data), "case": case, "crop": args.crop, "threads": args.threads,
              "chunk_size": args.chunk_size}
    plan: list[tuple[str, str, dict]] = [("baseline", "baseline", {**common, "task": "baseline"})]
    if "unet" in args.configs:
        plan.append(("unet", "3D UNet 1x", {**common, "task": "unet", "weights": str(args.unet),
                                            "unet_mode": args.unet_mode}))
    for name, factor in OSSNET_FACTORS.items():
        if name in args.configs:
            plan.append((name, f"OSS-Net {name.split('-')[1]}", {**common, "weights": str(args.weights),
                                                                 "factor": factor}))
    if args.matched_weights is not None:
        plan.append(("ossnet-matched-1x", "OSS-Net 1x at the UNet's budget",
                     {**common, "weights": str(args.matched_weights), "factor": 1.0}))

    rows: dict = {}
    for name, label, spec in plan:
        rows[name] = {"label": label, **measure(spec, args.threads, label)}
    report: dict = {"case": case, "crop": args.crop, "threads": args.threads,
                    "unet": None if args.unet is None else str(args.unet), "weights": str(args.weights),
                    "matched_weights": None if args.matched_weights is None else str(args.matched_weights),
                    "chunk_size": args.chunk_size, "hardware": rows["baseline"]["hardware"],
                    "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]),
                    "rows": rows, "ratios": ratios(rows), "training": {}}
    if args.unet is not None and (facts := training_facts(args.unet)) is not None:
        report["training"]["3D UNet"] = facts
    for title, weights in (("OSS-Net", args.weights), ("OSS-Net at the UNet's budget", args.matched_weights)):
        measured = [row for row in rows.values() if "metadata" in row and weights is not None
                    and Path(row.get("weights", "")) == weights]
        if measured:
            report["training"][title] = measured[0]["metadata"]

    publish(render(report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
