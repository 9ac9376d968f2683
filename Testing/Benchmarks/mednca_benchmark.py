"""Med-NCA against a UNet baseline, side by side in one run; prints a table (not a timed test).

    python Testing/Benchmarks/mednca_benchmark.py --unet runs/unet_baseline/unet_baseline.pt \
        --threads 2 --json runs/mednca_benchmark.json

Validation (the committed split, hippocampus_split.json): dense whole-volume hard Dice and HD95
(foreground, anterior, posterior; EfficientSegmentationCommon.metrics, 1 mm grid) for
- Med-NCA with ``--runs`` stochastic runs (10, the shipped setting) and with one run,
- the UNet baseline (Testing/Benchmarks/unet_baseline.py), applied slice-wise to whole
  volumes with Med-NCA's preprocessing and label decoding;
plus parameters, median inference seconds per volume and peak memory.

Scale: one inference on a 240x240x155 BraTS FLAIR volume (Med-NCA with one run, and the
UNet): seconds and peak memory; the automaton's achieved GFLOP/s (FLOPs counted analytically,
see :func:`nca_forward_flops`) as a fraction of a plain float32 ``torch.matmul``'s GFLOP/s
measured in the same run with the same thread count.

Memory is measured honestly per model: every measurement runs in a fresh Python process
(this script with ``--worker``), which imports the same modules (torch, MONAI, the Med-NCA
library) whatever it measures, and reports its peak resident set size (``ru_maxrss``) in
absolute terms and minus its peak after those imports (so the "inference" figure includes
the model, the input and everything the inference allocates). Times are wall-clock
(``perf_counter``) around the segmentation call (normalisation to decoded labels), with
``--threads`` torch threads; other processes on the machine slow them down.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

from measurement import current_mib, measure_in_fresh_process, peak_mib, publish, serve_worker, training_facts

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_NCA = REPO / "MedNCASegment" / "Resources" / "Models" / "mednca2d_hippocampus.pt"
DEFAULT_SPLIT = REPO / "MedNCASegment" / "Resources" / "Models" / "hippocampus_split.json"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "Task04_Hippocampus"
BRATS_GLOB = "BraTS_sample/*/Flair_subtrMeanDivStd.nii.gz"
REGIONS = {"foreground": (1, 2), "anterior": (1,), "posterior": (2,)}
MATMUL_SIZE = 2048
SOURCES = (REPO / "Resources" / "Python", REPO / "MedNCASegment")  # the libraries a worker imports


# ---------------------------------------------------------------------------------------------
# FLOP counting

def nca_cell_flops(config: dict, kernel: int) -> int:
    """FLOPs of one cell update at one cell: perception convolution(s), fc0 and fc1.

    A multiply-add counts as 2 FLOPs. Biases, ReLU, the random fire mask and the
    concatenations are not counted (O(channels) per cell against O(channels^2) for these).
    2D: two full k x k convolutions of the C-channel state (C -> 2C), fc0 3C -> hidden,
    fc1 hidden -> C - inputs. 3D: a depthwise k^3 convolution, fc0 2C -> hidden, fc1 as in 2D.
    """
    c, dims, hidden = config["channels"], config["dims"], config["hidden"]
    taps = kernel ** dims
    if dims == 2:
        perceive, features = 2 * taps * c * 2 * c, 3 * c
    else:
        perceive, features = 2 * taps * c, 2 * c
    return perceive + 2 * features * hidden + 2 * hidden * (c - config["input_channels"])


def nca_forward_flops(config: dict, padded_shape: tuple[int, ...], runs: int = 1,
                      downscale: int | None = None) -> dict[str, int]:
    """FLOPs of ``runs`` forward passes on a padded (D, H, W) volume: coarse and fine stage.

    2D models run per slice: D slices of H x W cells at full resolution and of
    (H/f) x (W/f) cells at the coarse level; 3D models run on the whole volume.
    """
    f = config["downscale"] if downscale is None else downscale
    d, h, w = padded_shape
    if config["dims"] == 2:
        fine_cells, coarse_cells = d * h * w, d * (h // f) * (w // f)
    else:
        fine_cells, coarse_cells = d * h * w, (d // f) * (h // f) * (w // f)
    coarse = runs * config["global_steps"] * coarse_cells * nca_cell_flops(config, config["global_kernel"])
    fine = runs * config["refinement_steps"] * fine_cells * nca_cell_flops(config, config["refinement_kernel"])
    return {"coarse": coarse, "fine": fine, "total": coarse + fine}


# ---------------------------------------------------------------------------------------------
# The measuring child process

def worker(spec: dict) -> dict:
    """Run one measurement described by ``spec`` in this (fresh) process and return its result."""
    # The same imports for every measurement, so the absolute figures are comparable.
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    import unet_baseline  # noqa: E402
    importlib.import_module("monai.networks.nets")  # unet_baseline imports MONAI's UNet lazily; import it now
    from EfficientSegmentationCommon.metrics import dice, hd95
    from MedNCASegmentLib.data import load_case, read_nifti_kji
    from MedNCASegmentLib.inference import keep_largest_component, segment
    from EfficientSegmentationCommon.hardware import hardware_description
    from MedNCASegmentLib.model_io import load_model

    torch.set_num_threads(spec["threads"])
    result: dict = {"imports_peak_mib": peak_mib(), "imports_rss_mib": current_mib(),
                    "threads": torch.get_num_threads(), "hardware": hardware_description()}
    kind = spec["task"]

    if kind == "matmul":
        n = spec["size"]
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(2):
            torch.matmul(a, b)
        seconds: list[float] = []
        started = time.perf_counter()
        while len(seconds) < 5 or (time.perf_counter() - started < spec["min_seconds"] and len(seconds) < 200):
            t = time.perf_counter()
            torch.matmul(a, b)
            seconds.append(time.perf_counter() - t)
        flops = 2 * n**3
        result.update({"size": n, "repeats": len(seconds), "gflops_median": flops / statistics.median(seconds) / 1e9,
                       "gflops_best": flops / min(seconds) / 1e9})
        return result

    model_kind = spec["model"]
    if model_kind == "nca":
        model, metadata = load_model(Path(spec["weights"]))
        result["config"] = model.config.to_dict()
        result["metadata"] = {k: metadata.get(k) for k in ("iterations", "train_minutes", "cpu_minutes", "threads")}

        def run(image: np.ndarray) -> np.ndarray:
            return segment(model, image, runs=spec["runs"], seed=spec["seed"], slice_batch=spec["slice_batch"]).labels()
    else:
        model = unet_baseline.load_unet(Path(spec["weights"]))

        def run(image: np.ndarray) -> np.ndarray:
            labels = unet_baseline.segment_unet(model, image, slice_batch=spec["slice_batch"] or 64)[0]
            # The shipped Med-NCA keeps the largest structure; the baseline may get the same help.
            return keep_largest_component(labels) if spec.get("largest_component") else labels
    result["parameters"] = int(sum(p.numel() for p in model.parameters()))

    if kind == "validation":
        cases = [load_case(Path(spec["data"]), case_id) for case_id in spec["cases"]]
        result["before_inference_rss_mib"] = current_mib()
        predictions, rows = [], []
        for case in cases:
            started = time.perf_counter()
            labels = run(case.image)
            rows.append({"case": case.case_id, "seconds": time.perf_counter() - started})
            predictions.append(labels)
        result["peak_mib"] = peak_mib()  # before the metrics, which are not the model's
        for row, case, labels in zip(rows, cases, predictions, strict=True):
            for region, values in REGIONS.items():
                predicted, truth = np.isin(labels, values), np.isin(case.labels, values)
                row[f"dice_{region}"] = dice(predicted, truth)
                row[f"hd95_{region}"] = hd95(predicted, truth, (1.0, 1.0, 1.0))
        result["rows"] = rows
    elif kind == "scale":
        volume = read_nifti_kji(Path(spec["volume"]))
        if spec.get("slices"):
            middle, count = volume.shape[0] // 2, spec["slices"]
            volume = np.ascontiguousarray(volume[middle - count // 2: middle - count // 2 + count])
        result["shape"] = list(volume.shape)
        result["before_inference_rss_mib"] = current_mib()
        started = time.perf_counter()
        labels = run(volume)
        result["seconds"] = time.perf_counter() - started
        result["peak_mib"] = peak_mib()
        result["foreground_voxels"] = int((labels > 0).sum())
        from torch.utils.flop_counter import FlopCounterMode

        if model_kind == "nca":
            factor = model.config.downscale
            result["padded_shape"] = [volume.shape[0], *(s + (-s) % factor for s in volume.shape[1:])]
            # Cross-check the analytic count against torch's FLOP counter on a small input.
            probe = torch.rand(2, model.config.input_channels, 8 * factor, 8 * factor)
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(probe)
            analytic = nca_forward_flops(result["config"], (2, 8 * factor, 8 * factor))["total"]
            result["flop_check"] = {"torch_flop_counter": counter.get_total_flops(), "analytic": analytic}
        else:
            multiple = unet_baseline.PAD_MULTIPLE
            padded = [volume.shape[0], *(s + (-s) % multiple for s in volume.shape[1:])]
            result["padded_shape"] = padded
            probe = torch.rand(1, unet_baseline.INPUT_CHANNELS, *padded[1:])
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(probe)
            result["flops"] = counter.get_total_flops() * padded[0]  # torch's count, per slice x slices
    return result


def measure(spec: dict, threads: int) -> dict:
    """Run one measurement in a fresh Python process and return its result."""
    label = spec["task"] + (f" {spec['model']}" if "model" in spec else "") + \
        (f" runs={spec['runs']}" if spec.get("runs") else "")
    return measure_in_fresh_process(Path(__file__).resolve(), spec, threads, label, SOURCES).result


# ---------------------------------------------------------------------------------------------
# Summaries and the table

def summarize_validation(result: dict) -> dict:
    import numpy as np

    rows = result["rows"]
    summary = {"cases": len(rows), "parameters": result["parameters"],
               "seconds_median": statistics.median(r["seconds"] for r in rows),
               "seconds_mean": statistics.fmean(r["seconds"] for r in rows),
               "peak_mib": result["peak_mib"], "peak_minus_imports_mib": result["peak_mib"] - result["imports_peak_mib"]}
    for region in REGIONS:
        values = np.array([r[f"dice_{region}"] for r in rows])
        summary[f"dice_{region}"] = {"mean": float(values.mean()), "sd": float(values.std())}
        distances = np.array([r[f"hd95_{region}"] for r in rows])
        finite = distances[np.isfinite(distances)]
        summary[f"hd95_{region}"] = {"mean": float(finite.mean()) if len(finite) else float("nan"),
                                     "infinite": int((~np.isfinite(distances)).sum())}
    return summary


def _mib(value: float) -> str:
    return f"{value:,.0f}"


def render(report: dict) -> str:
    lines: list[str] = []
    v = report.get("validation")
    if v:
        lines += [f"## Validation: {v['cases']} cases of {v['split']} (dense whole-volume hard metrics, "
                  f"{report['threads']} threads)", "",
                  "| model | params | Dice fg | Dice anterior | Dice posterior | HD95 fg (mm) | HD95 ant | HD95 post "
                  "| s/volume (median) | peak RSS MiB | peak - imports MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, s in v["models"].items():
            def hd(region: str, s=s) -> str:
                h = s[f"hd95_{region}"]
                return f"{h['mean']:.2f}" + (f" ({h['infinite']} inf)" if h["infinite"] else "")
            dices = " | ".join(f"{s[f'dice_{r}']['mean']:.4f} ± {s[f'dice_{r}']['sd']:.4f}" for r in REGIONS)
            lines.append(f"| {name} | {s['parameters']:,} | {dices} | {hd('foreground')} | {hd('anterior')} | "
                         f"{hd('posterior')} | {s['seconds_median']:.3f} | {_mib(s['peak_mib'])} | "
                         f"{_mib(s['peak_minus_imports_mib'])} |")
        lines.append("")
        lines.append("HD95: mean over cases where both masks are non-empty (inf: one of them empty).")
        lines.append("")
    t = report.get("training")
    if t:
        lines += ["## Training budgets", "", "| model | iterations | CPU minutes | wall minutes | threads |",
                  "|---|---:|---:|---:|---:|"]
        for name, facts in t.items():
            lines.append(f"| {name} | {facts.get('iterations')} | {facts.get('cpu_minutes')} | "
                         f"{facts.get('wall_minutes', facts.get('train_minutes'))} | {facts.get('threads')} |")
        lines.append("")
    s = report.get("scale")
    if s:
        shape = "x".join(str(n) for n in s["shape"])
        lines += [f"## Scale: one inference on {s['volume']} (KJI {shape}), {report['threads']} threads", "",
                  "| model | seconds | peak RSS MiB | peak - imports MiB | GFLOP | GFLOP/s | fraction of matmul |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        matmul = s["matmul"]["gflops_median"]
        for name, r in s["models"].items():
            gflop = r["flops"] / 1e9
            rate = gflop / r["seconds"]
            lines.append(f"| {name} | {r['seconds']:.2f} | {_mib(r['peak_mib'])} | {_mib(r['peak_minus_imports_mib'])} "
                         f"| {gflop:,.0f} | {rate:.1f} | {rate / matmul:.1%} |")
        m = s["matmul"]
        lines += ["", f"Plain torch.matmul {m['size']}x{m['size']} float32: {m['gflops_median']:.1f} GFLOP/s median "
                      f"({m['gflops_best']:.1f} best) over {m['repeats']} repeats, {m['threads']} threads.",
                  f"Med-NCA achieved {s['nca_gflops']:.1f} GFLOP/s = {s['nca_fraction_of_matmul']:.1%} of it "
                  f"(FLOPs counted analytically: perception conv + fc0 + fc1 per cell and step, coarse "
                  f"{s['models']['Med-NCA (runs=1)']['flops_coarse'] / 1e9:,.0f} + fine "
                  f"{s['models']['Med-NCA (runs=1)']['flops_fine'] / 1e9:,.0f} GFLOP; multiply-add = 2 FLOPs; "
                  f"check against torch's FLOP counter on a small input: "
                  f"{'equal' if s['flop_check']['analytic'] == s['flop_check']['torch_flop_counter'] else s['flop_check']}). "
                  "UNet FLOPs from torch.utils.flop_counter.", ""]
    lines.append(f"Hardware: {report.get('hardware', '?')}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if serve_worker(argv, worker):
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nca", type=Path, default=DEFAULT_NCA, help="Med-NCA weights (default: the shipped model)")
    parser.add_argument("--unet", type=Path, required=True, help="UNet baseline state_dict (unet_baseline.py)")
    parser.add_argument("--nca-matched", type=Path, default=None,
                        help="Med-NCA weights saved when its training had used the UNet's budget (a weights_NNNNNN.pt "
                             "of the training work dir): adds a row comparing both at the same budget")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    parser.add_argument("--cases", type=int, default=None, help="only the first N validation cases")
    parser.add_argument("--runs", type=int, default=10, help="Med-NCA stochastic runs (the shipped setting: 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slice-batch", type=int, default=None,
                        help="slices per forward pass (default: Med-NCA's memory-bounded choice; 64 for the UNet)")
    parser.add_argument("--brats", type=Path, default=None,
                        help=f"volume for the scale test (default: the first ../shared/data/{BRATS_GLOB})")
    parser.add_argument("--scale-slices", type=int, default=None,
                        help="only the central N slices of the scale volume (smoke tests; default: all)")
    parser.add_argument("--no-validation", action="store_true")
    parser.add_argument("--baseline-only", action="store_true", help="validation rows of the UNet only (a quick rerun)")
    parser.add_argument("--no-scale", action="store_true")
    parser.add_argument("--matmul-seconds", type=float, default=5.0, help="how long to time torch.matmul")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure (and per-case rows) here")
    args = parser.parse_args(argv)
    for path in (args.nca, args.unet, *([args.nca_matched] if args.nca_matched else [])):
        if not path.exists():
            parser.error(f"{path} does not exist")

    common = {"threads": args.threads, "seed": args.seed, "slice_batch": args.slice_batch}
    report: dict = {"threads": args.threads, "nca": str(args.nca), "unet": str(args.unet), "training": {}}
    if (facts := training_facts(args.unet)) is not None:
        report["training"]["UNet"] = facts

    if not args.no_validation:
        split = json.loads(args.split.read_text())
        cases = split["validation"][: args.cases] if args.cases else split["validation"]
        models: dict = {}
        raw: dict = {}
        variants = [(f"Med-NCA (runs={args.runs})", {"model": "nca", "weights": str(args.nca), "runs": args.runs}),
                    ("Med-NCA (runs=1)", {"model": "nca", "weights": str(args.nca), "runs": 1})]
        if args.nca_matched:
            variants.append(("Med-NCA at the UNet's budget (runs=1)",
                             {"model": "nca", "weights": str(args.nca_matched), "runs": 1}))
        variants += [("UNet", {"model": "unet", "weights": str(args.unet)}),
                     ("UNet + largest component", {"model": "unet", "weights": str(args.unet), "largest_component": True})]
        if args.baseline_only:
            variants = [(name, spec) for name, spec in variants if spec["model"] == "unet"]
        for name, spec in variants:
            if name == "Med-NCA (runs=1)" and args.runs == 1:
                continue
            result = measure({"task": "validation", "data": str(args.data), "cases": cases, **common, **spec}, args.threads)
            raw[name] = result
            models[name] = summarize_validation(result)
            report["hardware"] = result["hardware"]
            if "metadata" in result and spec["weights"] == str(args.nca):
                report["training"]["Med-NCA"] = result["metadata"]
        report["validation"] = {"split": args.split.name, "cases": len(cases), "models": models,
                                "per_case": {name: r["rows"] for name, r in raw.items()}}

    if not args.no_scale:
        volume = args.brats or next(iter(sorted((REPO.parent / "shared" / "data").glob(BRATS_GLOB))), None)
        if volume is None:
            parser.error("no BraTS FLAIR volume found; pass --brats")
        scale_spec = {"task": "scale", "volume": str(volume), "slices": args.scale_slices, **common}
        nca = measure({**scale_spec, "model": "nca", "weights": str(args.nca), "runs": 1}, args.threads)
        unet = measure({**scale_spec, "model": "unet", "weights": str(args.unet)}, args.threads)
        matmul = measure({"task": "matmul", "threads": args.threads, "size": MATMUL_SIZE,
                          "min_seconds": args.matmul_seconds}, args.threads)
        flops = nca_forward_flops(nca["config"], tuple(nca["padded_shape"]), runs=1)
        rows = {}
        for name, r, count in (("Med-NCA (runs=1)", nca, flops["total"]), ("UNet", unet, unet["flops"])):
            rows[name] = {"seconds": r["seconds"], "peak_mib": r["peak_mib"],
                          "peak_minus_imports_mib": r["peak_mib"] - r["imports_peak_mib"],
                          "parameters": r["parameters"], "flops": count, "foreground_voxels": r["foreground_voxels"]}
        rows["Med-NCA (runs=1)"].update(flops_coarse=flops["coarse"], flops_fine=flops["fine"])
        nca_gflops = flops["total"] / nca["seconds"] / 1e9
        report["scale"] = {"volume": str(Path(volume).relative_to(REPO.parent)) if Path(volume).is_relative_to(REPO.parent)
                           else str(volume), "shape": nca["shape"], "models": rows, "matmul": matmul,
                           "nca_gflops": nca_gflops, "nca_fraction_of_matmul": nca_gflops / matmul["gflops_median"],
                           "flop_check": nca["flop_check"]}
        report["hardware"] = nca["hardware"]

    publish(render(report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
