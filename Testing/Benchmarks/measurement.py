"""Measuring in fresh processes, as the benchmarks (mednca_benchmark.py, ossnet_benchmark.py) do.

A process's peak resident set size (``ru_maxrss``) never goes down, so one process can measure
the memory of one thing only: every measurement runs in a fresh Python process, the benchmark
script itself started with ``--worker SPEC RESULT``, which reads its JSON spec, measures and
writes a JSON result. The parent pins the child's torch/BLAS threads, puts the extension's
library folders on its path and also takes the child's whole-life peak RSS from ``os.wait4``
(``RUSAGE_CHILDREN`` would give only the largest child so far).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

WORKER_FLAG = "--worker"


def peak_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_mib() -> float:
    """This process's resident set size now, in MiB (NaN where /proc does not say)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_worker(argv: Sequence[str], worker: Callable[[dict], dict]) -> bool:
    """If ``argv`` starts a worker (``--worker SPEC RESULT``), measure ``worker(spec)`` and write the
    result; whether it did, so that the script's ``main`` returns instead of parsing its options."""
    if not argv or argv[0] != WORKER_FLAG:
        return False
    spec_path, result_path = Path(argv[1]), Path(argv[2])
    result = worker(json.loads(spec_path.read_text()))
    result_path.write_text(json.dumps(result))
    return True


class Measurement(NamedTuple):
    result: dict  # what the worker returned
    process_peak_mib: float  # the child's whole-life peak RSS, as the kernel reports it to the parent
    process_seconds: float  # wall seconds from starting the child to reading its result


def measure_in_fresh_process(script: Path, spec: dict, threads: int, label: str,
                             sources: Sequence[Path]) -> Measurement:
    """Run ``script --worker`` on ``spec`` in a fresh Python process and return what it measured.

    The child gets ``threads`` OpenMP/MKL threads and ``sources`` (the library folders it
    imports) ahead of any PYTHONPATH; progress goes to stderr under ``label``, so that stdout
    holds only the table. Raises if the child fails or writes no result.
    """
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        src = [str(path) for path in sources]
        env["PYTHONPATH"] = os.pathsep.join(src + [env["PYTHONPATH"]] if env.get("PYTHONPATH") else src)
        print(f"[benchmark] {label} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, str(script), WORKER_FLAG, str(spec_path), str(result_path)], env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0 or not result_path.exists():
            raise RuntimeError(f"measurement {label} failed (exit code {child.returncode})")
        result = json.loads(result_path.read_text())
        seconds = time.perf_counter() - started
        print(f"[benchmark] {label} done in {seconds:.1f} s", file=sys.stderr, flush=True)
        return Measurement(result, usage.ru_maxrss / 1024, seconds)


def training_facts(weights: Path) -> dict | None:
    """The budget a baseline was trained with (iterations, CPU and wall minutes, threads), from the
    JSON its script (budget_training.py) wrote beside its weights; None if there is none."""
    path = weights.with_suffix(".json")
    if not path.exists():
        return None
    facts = json.loads(path.read_text())
    return {k: facts.get(k) for k in ("iterations", "cpu_minutes", "wall_minutes", "threads")}


def publish(table: str, report: dict, json_path: Path | None) -> None:
    """Print the table and, if asked, write every figure of the report as JSON."""
    print(table)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n")


def paired_runs(run: Callable[[bool], dict], repeats: int, describe: Callable[[dict], str],
                labels: tuple[str, str] = ("plain", "preview")) -> dict[bool, list[dict]]:
    """A change timed against its baseline in one process: one warm-up ``run(False)`` (model load,
    first-touch allocations), then ``repeats`` interleaved pairs ``run(False)``, ``run(True)``, so
    that load from other processes falls on both alike. Each run's row (a dict, e.g. seconds) is
    reported on stderr as ``describe(row)`` after its label; returns the rows per side."""
    run(False)
    rows: dict[bool, list[dict]] = {False: [], True: []}
    width = max(len(label) for label in labels)
    for repeat in range(repeats):
        for changed in (False, True):
            rows[changed].append(run(changed))
            print(f"repeat {repeat + 1} {labels[changed]:<{width}}: {describe(rows[changed][-1])}",
                  file=sys.stderr, flush=True)
    return rows


def medians(rows: dict[bool, list[dict]], key: str) -> dict[bool, float]:
    """The median of ``key`` over each side's rows of :func:`paired_runs`."""
    return {side: statistics.median(row[key] for row in side_rows) for side, side_rows in rows.items()}
