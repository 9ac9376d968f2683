"""What the live preview costs a Med-NCA run in the web app; prints a table (not a timed test).

    PYTHONPATH=Resources/Python:MedNCASegment:OSSNetSegment:Web python Testing/Benchmarks/web_preview_benchmark.py

The web app runs as ``efficientseg-web`` does (a server process on a free port of 127.0.0.1),
driven by Debian's chromium through Playwright as in ``Testing/Python/test_web_app.py``: upload
one real hippocampus MRI (default ``hippocampus_006``, a validation case), set the runs, check
or clear "Live preview", click Segment and wait for the result. Unlike
``preview_benchmark.py`` (the logic and ``LivePreview`` alone), this includes everything the
server does for a preview frame: writing the preview segmentation, rendering the slice and 3D
views and sending them to the browser. Plain and preview runs alternate (``--repeats`` pairs,
after a plain warm-up run). Reported: median wall seconds from the click to the result on the
page, and the server process's CPU seconds (all its threads, from /proc, so Linux only) per
run, and the ratios preview / plain.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from measurement import medians, paired_runs

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("EFFSEG_DATA", REPO.parent / "shared" / "data")) / "Task04_Hippocampus"
CHROMIUM = Path(os.environ.get("EFFSEG_CHROMIUM", "/usr/bin/chromium"))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process (all threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="hippocampus_006")
    parser.add_argument("--runs", type=int, default=10, help="stochastic runs (the shipped setting: 10)")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs (plain, preview)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (OMP_NUM_THREADS)")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from EfficientSegmentationCommon.hardware import hardware_description

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    server = subprocess.Popen([sys.executable, "-m", "EfficientSegmentationWeb.app", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "index.html", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.goto(url)
            page.wait_for_selector("#segment", timeout=60000)
            page.set_input_files("input[type=file]", [str(DATA / "imagesTr" / f"{args.case}.nii.gz")])
            page.wait_for_selector("#segment:not([disabled])", timeout=60000)
            page.fill("input#runs-field", str(args.runs))
            page.press("input#runs-field", "Tab")

            def run(with_preview: bool) -> dict:
                page.wait_for_selector("#segment:not([disabled])", timeout=60000)
                page.set_checked("#preview", with_preview, force=True)
                cpu, wall = cpu_seconds(server.pid), time.perf_counter()
                page.click("#segment")
                page.wait_for_selector("#segment >> text=Cancel", timeout=60000)  # the previous result's line goes
                page.wait_for_selector("#result-text >> text=Done in", timeout=1200000)
                return {"wall": time.perf_counter() - wall, "cpu": cpu_seconds(server.pid) - cpu}

            rows = paired_runs(run, args.repeats, lambda r: f"{r['wall']:.2f} s wall, {r['cpu']:.2f} s server CPU")
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    wall, cpu = medians(rows, "wall"), medians(rows, "cpu")
    print(f"## Live preview cost in the web app: {args.case}, runs={args.runs}, {args.repeats} pairs, "
          f"{args.threads} torch thread(s)\n")
    print("| run | wall s, click to result (median) | server CPU s (median, all threads) |\n|---|---:|---:|")
    print(f"| plain | {wall[False]:.2f} | {cpu[False]:.2f} |")
    print(f"| with preview | {wall[True]:.2f} | {cpu[True]:.2f} |")
    print(f"\nRatio preview / plain: wall {wall[True] / wall[False]:.3f}, CPU {cpu[True] / cpu[False]:.3f}.")
    print(f"Hardware: {hardware_description()} (this process; the server ran {args.threads} torch thread(s)).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
