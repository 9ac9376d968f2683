"""Med-NCA on a CPU: speed levers, scale, memory bound and allocator retention; prints tables (not a timed test).

    PYTHONPATH=MedNCASegment:Resources/Python python Testing/Benchmarks/mednca_speed.py --threads 2 \\
        --levers --dice --scale --sizes --retention --json runs/mednca_speed.json

The companion of mednca_benchmark.py (accuracy against the UNet baseline); it reuses that
script's FLOP counts and fresh-process measurements.

- ``--levers``: ONE process measures plain ``torch.matmul`` (float32 and bfloat16, 2048^2) and
  every inference variant on ``--crops`` validation crops with 1 and 10 runs, interleaved
  (repeat, crop, variant) so that load from other processes spreads over all of them; per
  variant the median over crops of the per-crop median seconds, the ratio to today's
  implementation (:func:`segment_per_run`) per crop, and the arithmetic actually done per
  second (FLOPs counted analytically for the variant's form of the cell) as a fraction of each
  matmul.
- ``--dice``: validation-split Dice (fg, anterior, posterior) and NQM of the variants whose
  arithmetic differs from today's (fresh process each).
- ``--scale``: one run on the 240x240x155 BraTS FLAIR, fresh process each: the shipped path,
  the 2D UNet baseline (random weights: time and memory do not depend on their values) and,
  with ``--scale-reference``, today's per-run path (minutes).
- ``--sizes``: peak RSS of one shipped run on volumes of 128^3, 192^3 and 256x256x180 voxels
  (the BraTS FLAIR resampled), fresh process each: how peak memory grows with the volume.
- ``--retention``: RSS after each of ``--retention-runs`` runs of varied shapes in one process,
  for each allocator policy, fresh process each: ``none`` (glibc's defaults; the trim that
  :func:`segment` does after every run is switched off), ``trim`` (``malloc_trim(0)`` after each
  run, what :func:`segment` does), ``mallopt`` (fixed 1 MiB mmap and 64 MiB trim thresholds,
  no trim).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

from measurement import current_mib, measure_in_fresh_process, peak_mib, publish, serve_worker

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from mednca_benchmark import (BRATS_GLOB, DEFAULT_DATA, DEFAULT_NCA, DEFAULT_SPLIT, REGIONS,  # noqa: E402
                              SOURCES, nca_cell_flops)

MATMUL_SIZE = 2048
SIZES = {"128^3": (128, 128, 128), "192^3": (192, 192, 192), "256x256x180": (180, 256, 256)}
# Variants of the levers table: name -> (keyword arguments of inference.segment, or None for
# today's segment_per_run; the form of the cell whose FLOPs count).
VARIANTS = {
    "today: one run at a time, training-time layers": (None, "layers"),
    "runs x slices batched (layers, float32)": ({"fused": False, "precision": "float32"}, "layers"),
    "fused cell alone (one slice-run per call, float32)": ({"precision": "float32", "tile_pixels": 1}, "fused"),
    "fused + batched (float32)": ({"precision": "float32"}, "fused"),
    "fused + batched + bfloat16 (shipped)": ({}, "fused"),
    "shipped, tiles of 8 k pixels": ({"tile_pixels": 8 * 1024}, "fused"),
    "shipped, tiles of 128 k pixels": ({"tile_pixels": 128 * 1024}, "fused"),
    "shipped, one tile per crop": ({"tile_pixels": 1 << 30}, "fused"),
}
TODAY = next(iter(VARIANTS))


def fused_cell_flops(config: dict, kernel: int) -> int:
    """FLOPs of one fused-cell update at one cell (MedNCASegmentLib.fused_cell): the folded k x k
    convolution C -> hidden and fc1 hidden -> C (padded to the whole state); multiply-add = 2."""
    c, hidden = config["channels"], config["hidden"]
    return 2 * (kernel * kernel * c * hidden + hidden * c)


def crop_flops(config: dict, shape: tuple[int, int, int], runs: int, form: str) -> int:
    """FLOPs of ``runs`` runs of a 2D model on a (D, H, W) volume padded to the downscale factor."""
    f = config["downscale"]
    d, h, w = shape[0], -(-shape[1] // f) * f, -(-shape[2] // f) * f
    cell = nca_cell_flops if form == "layers" else fused_cell_flops
    fine = runs * config["refinement_steps"] * d * h * w * cell(config, config["refinement_kernel"])
    coarse = runs * config["global_steps"] * d * (h // f) * (w // f) * cell(config, config["global_kernel"])
    return fine + coarse


def time_matmul(dtype_name: str, seconds: float) -> float:
    """Median GFLOP/s of a 2048^2 matmul in this process."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=dtype), torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=dtype)
    for _ in range(2):
        a @ b
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * MATMUL_SIZE**3 / statistics.median(times) / 1e9


def set_allocator_policy(policy: str) -> None:
    """``mallopt``: fixed 1 MiB mmap threshold (large arrays always mapped, returned on free) and
    64 MiB trim threshold, which also turns off glibc's dynamic threshold; others: nothing."""
    if policy == "mallopt":
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 20)
        libc.mallopt(m_trim_threshold, 64 << 20)


def worker(spec: dict) -> dict:
    set_allocator_policy(spec.get("policy", "none"))
    import numpy as np
    import torch

    from EfficientSegmentationCommon.hardware import hardware_description
    from EfficientSegmentationCommon.metrics import dice
    from MedNCASegmentLib.data import load_case, read_nifti_kji
    from MedNCASegmentLib.fused_cell import native_bfloat16
    from MedNCASegmentLib import inference
    from MedNCASegmentLib.inference import segment, segment_per_run

    if spec.get("policy") in ("none", "mallopt"):
        inference.release_free_memory = lambda: False  # segment() trims after every run; not in these policies
    from MedNCASegmentLib.model_io import load_model

    torch.set_num_threads(spec["threads"])
    result: dict = {"imports_peak_mib": peak_mib(), "threads": torch.get_num_threads(),
                    "hardware": hardware_description(), "native_bfloat16": native_bfloat16()}
    model, _ = load_model(Path(spec["weights"]))
    config = model.config.to_dict()
    result["config"] = config

    def run(name: str, image: np.ndarray, runs: int):
        arguments, _form = VARIANTS[name]
        if arguments is None:
            return segment_per_run(model, image, runs=runs, seed=spec["seed"])
        return segment(model, image, runs=runs, seed=spec["seed"], **arguments)

    task = spec["task"]
    if task == "levers":
        cases = [load_case(Path(spec["data"]), case_id) for case_id in spec["cases"]]
        result["matmul_before"] = {d: time_matmul(d, spec["matmul_seconds"]) for d in ("float32", "bfloat16")}
        seconds: dict = {}
        for _ in range(spec["repeats"]):
            for case in cases:
                for name in spec["variants"]:
                    for runs in (1, 10):
                        started = time.perf_counter()
                        run(name, case.image, runs)
                        seconds.setdefault(f"{name}|{runs}|{case.case_id}", []).append(time.perf_counter() - started)
        result["matmul_after"] = {d: time_matmul(d, spec["matmul_seconds"]) for d in ("float32", "bfloat16")}
        result["seconds"] = seconds
        result["shapes"] = {case.case_id: list(case.image.shape) for case in cases}
    elif task == "dice":
        rows = []
        for case_id in spec["cases"]:
            case = load_case(Path(spec["data"]), case_id)
            started = time.perf_counter()
            stochastic = run(spec["variant"], case.image, spec["runs"])
            elapsed = time.perf_counter() - started
            labels = stochastic.labels()
            rows.append({"case": case_id, "seconds": elapsed, "nqm": [float(q) for q in stochastic.quality],
                         **{f"dice_{region}": dice(np.isin(labels, values), np.isin(case.labels, values))
                            for region, values in REGIONS.items()}})
        result["rows"] = rows
    elif task in ("scale", "size"):
        volume = read_nifti_kji(Path(spec["volume"]))
        if task == "size":
            from scipy import ndimage

            target = spec["shape"]
            volume = ndimage.zoom(volume, [t / s for t, s in zip(target, volume.shape, strict=True)], order=1)
            volume = np.ascontiguousarray(volume[: target[0], : target[1], : target[2]], dtype=np.float32)
        result["shape"] = list(volume.shape)
        result["before_inference_mib"] = current_mib()
        before_peak = peak_mib()
        started = time.perf_counter()
        if spec["variant"] == "unet":
            import unet_baseline
            from monai_unet import build_unet

            torch.manual_seed(0)
            unet = build_unet(unet_baseline.UNET_CONFIG).eval()
            unet_baseline.segment_unet(unet, volume)
            padded = [volume.shape[0], *(s + (-s) % unet_baseline.PAD_MULTIPLE for s in volume.shape[1:])]
            from torch.utils.flop_counter import FlopCounterMode

            result["seconds"] = time.perf_counter() - started
            result["peak_mib"] = peak_mib()
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                unet(torch.rand(1, unet_baseline.INPUT_CHANNELS, *padded[1:]))
            result["flops"] = counter.get_total_flops() * padded[0]
        else:
            run(spec["variant"], volume, 1).labels()
            result["seconds"] = time.perf_counter() - started
            result["peak_mib"] = peak_mib()
            result["flops"] = crop_flops(config, volume.shape, 1, VARIANTS[spec["variant"]][1])
        result["peak_before_inference_mib"] = before_peak
    elif task == "retention":
        rng = np.random.default_rng(2026)
        rss, elapsed = [current_mib()], []
        for _ in range(spec["count"]):
            shape = (int(rng.integers(16, 97)), int(rng.integers(48, 225)), int(rng.integers(48, 225)))
            image = rng.normal(100, 30, size=shape).astype(np.float32)
            started = time.perf_counter()
            segment(model, image, runs=1, seed=0).labels()
            elapsed.append(time.perf_counter() - started)
            rss.append(current_mib())
        result.update(rss=rss, seconds=elapsed)
    return result


def measure(spec: dict, threads: int, label: str) -> dict:
    return measure_in_fresh_process(Path(__file__).resolve(), spec, threads, label, SOURCES).result


def summarize_levers(result: dict) -> dict:
    config = result["config"]
    seconds = result["seconds"]
    matmul = {d: statistics.median([result["matmul_before"][d], result["matmul_after"][d]]) for d in ("float32", "bfloat16")}
    rows = {}
    for name in VARIANTS:
        if not any(key.startswith(name + "|") for key in seconds):
            continue
        row = {}
        for runs in (1, 10):
            per_case = {case: statistics.median(seconds[f"{name}|{runs}|{case}"]) for case in result["shapes"]}
            today = {case: statistics.median(seconds[f"{TODAY}|{runs}|{case}"]) for case in result["shapes"]}
            flops = {case: crop_flops(config, tuple(shape), runs, VARIANTS[name][1])
                     for case, shape in result["shapes"].items()}
            rate = statistics.median(flops[c] / per_case[c] for c in per_case) / 1e9
            row[runs] = {"seconds": statistics.median(per_case.values()),
                         "speedup": statistics.median(today[c] / per_case[c] for c in per_case),
                         "gflops": rate, "of_matmul_float32": rate / matmul["float32"],
                         "of_matmul_bfloat16": rate / matmul["bfloat16"]}
        rows[name] = row
    return {"matmul": matmul, "rows": rows, "cases": list(result["shapes"]), "shapes": result["shapes"],
            "native_bfloat16": result["native_bfloat16"]}


def render(report: dict, threads: int) -> str:
    lines: list[str] = []
    lv = report.get("levers")
    if lv:
        m = lv["matmul"]
        lines += [f"## Levers: {len(lv['cases'])} validation crops, {threads} threads, one process, interleaved", "",
                  "| variant | s, 1 run | speed-up | s, 10 runs | speed-up | GFLOP/s done (10 runs) "
                  "| of fp32 matmul | of bf16 matmul |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, row in lv["rows"].items():
            one, ten = row[1], row[10]
            lines.append(f"| {name} | {one['seconds']:.3f} | {one['speedup']:.1f}x | {ten['seconds']:.3f} | "
                         f"{ten['speedup']:.1f}x | {ten['gflops']:.0f} | {ten['of_matmul_float32']:.0%} | "
                         f"{ten['of_matmul_bfloat16']:.0%} |")
        lines += ["", f"Matmul 2048^2 in the same process (median of before and after): float32 "
                      f"{m['float32']:.0f} GFLOP/s, bfloat16 {m['bfloat16']:.0f} GFLOP/s; native bf16: "
                      f"{lv['native_bfloat16']}. Seconds: median over crops of the per-crop median; speed-up: "
                      "median over crops of today's time / the variant's. FLOPs actually done: training-time "
                      "layers 68,864 per cell and step, fused cell 81,920 (folded 3x3 conv 32->128 + fc1 128->32).", ""]
    dc = report.get("dice")
    if dc:
        lines += [f"## Validation ({dc['cases']} cases, dense hard Dice, mean)", "",
                  "| variant | runs | Dice fg | Dice anterior | Dice posterior | NQM mean | NQM max | s/volume (median) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in dc["rows"]:
            lines.append(f"| {row['variant']} | {row['runs']} | {row['dice_foreground']:.4f} | "
                         f"{row['dice_anterior']:.4f} | {row['dice_posterior']:.4f} | {row['nqm_mean']:.4f} | "
                         f"{row['nqm_max']:.4f} | {row['seconds']:.3f} |")
        lines.append("")
    sc = report.get("scale")
    if sc:
        lines += [f"## Scale: one run on {sc['volume']} (KJI {'x'.join(map(str, sc['shape']))}), {threads} threads, "
                  "fresh process each", "", "| variant | seconds | peak RSS MiB | peak - before inference MiB | "
                  "GFLOP done | GFLOP/s |", "|---|---:|---:|---:|---:|---:|"]
        for name, r in sc["rows"].items():
            lines.append(f"| {name} | {r['seconds']:.1f} | {r['peak_mib']:,.0f} | "
                         f"{r['peak_mib'] - r['peak_before_inference_mib']:,.0f} | {r['flops'] / 1e9:,.0f} | "
                         f"{r['flops'] / 1e9 / r['seconds']:.0f} |")
        lines.append("")
    sz = report.get("sizes")
    if sz:
        lines += ["## Peak RSS against volume size (shipped, one run, fresh process each)", "",
                  "| volume | voxels | seconds | peak RSS MiB | peak - before inference MiB | bytes per voxel above "
                  "the smallest |", "|---|---:|---:|---:|---:|---:|"]
        first = next(iter(sz.values()))
        for name, r in sz.items():
            voxels = r["voxels"]
            extra = (r["peak_mib"] - first["peak_mib"]) * 2**20 / (voxels - first["voxels"]) if voxels > first["voxels"] else float("nan")
            lines.append(f"| {name} | {voxels:,} | {r['seconds']:.1f} | {r['peak_mib']:,.0f} | "
                         f"{r['peak_mib'] - r['peak_before_inference_mib']:,.0f} | {extra:.0f} |")
        lines.append("")
    rt = report.get("retention")
    if rt:
        lines += [f"## Allocator retention: {rt['count']} one-run segmentations of random shapes (16-96 x 48-224 x "
                  "48-224) in one process", "", "| policy | RSS start MiB | RSS after 1st | max | last | "
                  "total s |", "|---|---:|---:|---:|---:|---:|"]
        for policy, r in rt["rows"].items():
            rss = r["rss"]
            lines.append(f"| {policy} | {rss[0]:,.0f} | {rss[1]:,.0f} | {max(rss):,.0f} | {rss[-1]:,.0f} | "
                         f"{sum(r['seconds']):.1f} |")
        lines.append("")
    lines.append(f"Hardware: {report.get('hardware', '?')}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if serve_worker(argv, worker):
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nca", type=Path, default=DEFAULT_NCA)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levers", action="store_true")
    parser.add_argument("--crops", type=int, default=5, help="validation crops timed by --levers")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=None, help="names of VARIANTS to time (default: all)")
    parser.add_argument("--matmul-seconds", type=float, default=3.0)
    parser.add_argument("--dice", action="store_true", help="validation Dice of the shipped path, 10 and 1 runs")
    parser.add_argument("--dice-float32", action="store_true", help="with --dice: also the float32 fused path")
    parser.add_argument("--scale", action="store_true")
    parser.add_argument("--scale-reference", action="store_true", help="also today's per-run path at scale (minutes)")
    parser.add_argument("--brats", type=Path, default=None)
    parser.add_argument("--sizes", action="store_true")
    parser.add_argument("--retention", action="store_true")
    parser.add_argument("--retention-runs", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    split = json.loads(args.split.read_text())["validation"]
    common = {"threads": args.threads, "seed": args.seed, "weights": str(args.nca), "data": str(args.data)}
    report: dict = {"threads": args.threads}
    shipped = "fused + batched + bfloat16 (shipped)"

    if args.levers:
        variants = args.variants or list(VARIANTS)
        if TODAY not in variants:
            variants = [TODAY, *variants]
        result = measure({**common, "task": "levers", "cases": split[: args.crops], "repeats": args.repeats,
                          "variants": variants, "matmul_seconds": args.matmul_seconds}, args.threads, "levers")
        report["levers"] = summarize_levers(result)
        report["levers_raw"] = result["seconds"]
        report["hardware"] = result["hardware"]
    if args.dice:
        rows = []
        variants = [(shipped, 10), (shipped, 1)] + ([("fused + batched (float32)", 10)] if args.dice_float32 else [])
        for variant, runs in variants:
            result = measure({**common, "task": "dice", "cases": split, "variant": variant, "runs": runs},
                             args.threads, f"dice {variant} runs={runs}")
            per_case = result["rows"]
            nqm = [statistics.fmean(r["nqm"]) for r in per_case]
            rows.append({"variant": variant, "runs": runs, "nqm_mean": statistics.fmean(nqm), "nqm_max": max(nqm),
                         "seconds": statistics.median(r["seconds"] for r in per_case), "per_case": per_case,
                         **{f"dice_{region}": statistics.fmean(r[f"dice_{region}"] for r in per_case)
                            for region in REGIONS}})
            report["hardware"] = result["hardware"]
        report["dice"] = {"cases": len(split), "rows": rows}
    volume = args.brats or next(iter(sorted((REPO.parent / "shared" / "data").glob(BRATS_GLOB))), None)
    if args.scale:
        rows = {}
        variants = [(shipped, shipped), ("2D UNet baseline (random weights)", "unet")]
        if args.scale_reference:
            variants.append((TODAY, TODAY))
        for name, variant in variants:
            result = measure({**common, "task": "scale", "volume": str(volume), "variant": variant}, args.threads,
                             f"scale {name}")
            rows[name] = result
            report["hardware"] = result["hardware"]
        report["scale"] = {"volume": str(Path(volume).relative_to(REPO.parent)), "shape": result["shape"],
                           "rows": rows}
    if args.sizes:
        sizes = {}
        for name, shape in SIZES.items():
            result = measure({**common, "task": "size", "volume": str(volume), "variant": shipped, "shape": list(shape)},
                             args.threads, f"size {name}")
            sizes[name] = {**result, "voxels": int(shape[0] * shape[1] * shape[2])}
        report["sizes"] = sizes
    if args.retention:
        rows = {}
        for policy in ("none", "trim", "mallopt"):
            rows[policy] = measure({**common, "task": "retention", "policy": policy, "count": args.retention_runs},
                                   args.threads, f"retention {policy}")
        report["retention"] = {"count": args.retention_runs, "rows": rows}
    publish(render(report, args.threads), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
