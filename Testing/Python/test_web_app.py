"""The web app end to end in a real headless browser (Debian's chromium driven by Playwright).

The server runs as a separate process (``python -m EfficientSegmentationWeb.app``) on a free port
of 127.0.0.1, exactly as ``efficientseg-web`` starts it; the browser uploads real cases, clicks
Segment, waits for the result and downloads it; the downloaded label map is scored against the
expert labels. Screenshots of every step go to ``Testing/Web/artifacts/`` (git-ignored).

Skips, with the reason, only where the browser or the optional web dependencies are missing
(``.ci/run`` installs both and sets ``EFFSEG_REQUIRE_WEB=1``, which turns a missing Python
dependency into a failure).
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DATA_ROOT, REPO_ROOT, hippocampus_paths
from dicom_series import write_series, zip_folder
from EfficientSegmentationCommon.metrics import dice

CHROMIUM = Path(os.environ.get("EFFSEG_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO_ROOT / "Testing" / "Web" / "artifacts"
BRATS_CASE = DATA_ROOT / "BraTS_sample" / "brats_2013_pat0006_1"  # the OSS-Net validation case
OSSNET_CARD = REPO_ROOT / "OSSNetSegment" / "Resources" / "Models" / "ossnet_brats_wholetumour.md"
HIPPOCAMPUS_CASE = "hippocampus_006"  # a case of the Med-NCA validation split
RUNS = 2  # stochastic runs: the fewest that give a quality score, to keep the test short


def _missing_web_dependencies() -> list[str]:
    return [name for name in ("trame_slicer", "playwright", "slicer_layer_dm") if importlib.util.find_spec(name) is None]


if _missing_web_dependencies():
    reason = (f"web dependencies missing ({', '.join(_missing_web_dependencies())}): pip install -e '.[web]' "
              "and pip install --no-deps slicer-layer-dm==2.0.0 (see README, Web app)")
    if os.environ.get("EFFSEG_REQUIRE_WEB") == "1":
        raise RuntimeError(reason)
    pytest.skip(reason, allow_module_level=True)
if not CHROMIUM.exists():
    pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium (or set EFFSEG_CHROMIUM)", allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free port, offering the BraTS validation case from --data; its log is an artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    log = (ARTIFACTS / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "EfficientSegmentationWeb.app", "--port", str(port),
                                "--data", str(BRATS_CASE)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "index.html", timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the web server did not start; see {ARTIFACTS / 'server.log'}")
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


class AppPage:
    """The app in one browser tab, with the steps the tests take and a screenshot after each."""

    def __init__(self, browser, url: str, name: str) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        self.page = self.context.new_page()
        self.name = name
        # The previous test's tab may still be leaving: the busy page then retries.
        deadline = time.monotonic() + 30
        while True:
            self.page.goto(url)
            if self.page.locator("#segment").count() or self._wait_for_app():
                break
            if time.monotonic() > deadline:
                raise AssertionError("the app stayed busy after the previous page closed")
            time.sleep(1)

    def _wait_for_app(self) -> bool:
        try:
            self.page.wait_for_selector("#segment", timeout=20000)
            return True
        except Exception:
            return False

    def shot(self, step: str) -> Path:
        time.sleep(1.0)  # let the remote views' last frame arrive
        path = ARTIFACTS / f"{self.name}_{step}.png"
        self.page.screenshot(path=str(path))
        return path

    def upload(self, *paths: Path) -> None:
        self.page.set_input_files("input[type=file]", [str(p) for p in paths])

    def set_number(self, field: str, value: float) -> None:
        self.page.fill(f"input#{field}", str(value))
        self.page.press(f"input#{field}", "Tab")

    def choose(self, select_id: str, option: str) -> None:
        self.page.click(f"#{select_id}", force=True)
        self.page.get_by_role("option", name=option, exact=True).click()

    def segment_enabled(self, timeout: float = 60000) -> None:
        self.page.wait_for_selector("#segment:not([disabled])", timeout=timeout)

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector)

    def download(self, fmt_id: str, target: Path) -> Path:
        with self.page.expect_download(timeout=120000) as info:
            self.page.click(f"#download-{fmt_id}")
        info.value.save_as(str(target))
        return target

    def close(self) -> None:
        self.context.close()


def _record(name: str, line: str) -> None:
    """Keep a measured figure beside the screenshots (Testing/Web/artifacts/<name>_dice.txt)."""
    (ARTIFACTS / f"{name}_dice.txt").write_text(line + "\n")


def _label_map(path: Path) -> np.ndarray:
    """A NIfTI label map as a KJI array."""
    return np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)


def _reference_mednca_dice(runs: int) -> float:
    """Foreground Dice of the same settings run through the logic directly (no web)."""
    from EfficientSegmentationCommon.scene import create_scene, load_volume
    from EfficientSegmentationCommon.segmentation_output import export_segmentation_labels
    from MedNCASegmentLib.logic import MedNCASegmentLogic

    image, labels = hippocampus_paths(HIPPOCAMPUS_CASE)
    scene = create_scene()
    logic = MedNCASegmentLogic(scene)
    volume = load_volume(scene, image)
    result = logic.segment(volume, runs=runs)
    predicted = export_segmentation_labels(scene, result.segmentation, volume, logic.model_entry(None).segments)
    return dice(predicted > 0, _label_map(labels) > 0)


def test_mednca_upload_segment_download_matches_the_logic(server, browser, tmp_path):
    image, labels = hippocampus_paths(HIPPOCAMPUS_CASE)
    app = AppPage(browser, server, "mednca")
    try:
        assert "Load a volume first." in app.text("#status-text")
        app.shot("1_start")
        app.upload(image)
        app.segment_enabled()
        app.set_number("runs-field", RUNS)
        app.shot("2_loaded")
        app.page.click("#segment")
        app.page.wait_for_selector("#result", timeout=300000)
        app.shot("3_result")
        names = app.page.locator(".segment-name").all_inner_texts()
        assert names == ["anterior hippocampus", "posterior hippocampus"]
        assert "Done in" in app.text("#result-text")
        assert re.search(r"Quality score \(NQM\) \(lower is better\): anterior hippocampus "
                         r"[0-9.]+, posterior hippocampus [0-9.]+", app.text("#result-text"))
        assert re.search(r"Spread of the runs inside the structure \(lower is better, warning above [0-9.]+\): "
                         r"[0-9.]+", app.text("#result-text"))
        assert len(app.page.locator(".segment-quality").all_inner_texts()) == 2
        label_map = app.download("nii-gz", tmp_path / "web.nii.gz")
        segmentation = app.download("seg-nrrd", tmp_path / "web.seg.nrrd")
    finally:
        app.close()
    predicted, truth = _label_map(label_map), _label_map(labels)
    assert predicted.shape == truth.shape  # on the input grid
    assert set(np.unique(predicted)) <= {0, 1, 2}
    measured = dice(predicted > 0, truth > 0)
    reference = _reference_mednca_dice(runs=RUNS)
    _record("mednca", f"{HIPPOCAMPUS_CASE}, {RUNS} runs: web Dice {measured:.4f}, logic {reference:.4f}")
    assert abs(measured - reference) <= 0.02, f"web Dice {measured:.4f}, logic {reference:.4f}"
    assert measured > 0.8
    assert segmentation.stat().st_size > 0 and segmentation.read_bytes().startswith(b"NRRD")


def test_bad_uploads_show_a_message_and_leave_the_scene(server, browser, tmp_path):
    image, _ = hippocampus_paths(HIPPOCAMPUS_CASE)
    write_series(sitk.ReadImage(str(image)), tmp_path / "dicom", 1, "T1w")
    dicom_zip = zip_folder(tmp_path / "dicom", tmp_path / "dicom_case.zip")
    corrupt_zip = tmp_path / "corrupt.zip"
    corrupt_zip.write_bytes(dicom_zip.read_bytes()[:5000])
    unreadable = tmp_path / "broken.nii.gz"
    unreadable.write_bytes(b"this is not an image")
    four_d = tmp_path / "series_4d.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 9, 10, 3)).astype(np.float32), np.eye(4)), four_d)
    app = AppPage(browser, server, "bad_input")
    try:
        app.upload(image)
        app.segment_enabled()
        app.upload(unreadable)
        app.page.wait_for_selector("#load-message", timeout=60000)
        assert "'broken.nii.gz' is unreadable" in app.text("#load-message")
        app.shot("1_unreadable")
        app.upload(four_d)
        app.page.wait_for_selector("#load-message >> text=is a 4D image", timeout=60000)
        app.shot("2_4d")
        app.upload(corrupt_zip)
        app.page.wait_for_selector("#load-message >> text=is not a readable zip file", timeout=60000)
        assert "'corrupt.zip'" in app.text("#load-message")
        app.upload(dicom_zip)  # a zipped DICOM series: loaded, named after the zip and the series
        app.page.wait_for_selector("#load-message", state="detached", timeout=60000)
        app.choose("input-0", "dicom_case T1w")
        app.segment_enabled()
        app.shot("3_dicom_zip")
        # The bad files changed nothing: the two good volumes are loaded, either can be segmented.
        assert app.page.locator("#segment:not([disabled])").count() == 1
        # Missing modality: OSS-Net needs FLAIR and T1c; the T1 case is named neither.
        app.choose("model", "OSS-Net whole brain tumour (FLAIR + contrast T1 MRI)")
        app.page.wait_for_selector("#status-text >> text=Select the", timeout=30000)
        assert app.page.locator("#segment[disabled]").count() == 1
        app.shot("4_missing_modality")
    finally:
        app.close()


def test_cancel_mid_run_leaves_no_result(server, browser):
    image, _ = hippocampus_paths(HIPPOCAMPUS_CASE)
    app = AppPage(browser, server, "cancel")
    try:
        app.upload(image)
        app.segment_enabled()
        app.set_number("runs-field", 50)
        app.page.check("#preview", force=True)  # the automaton's live preview in the slice views
        app.page.click("#segment")
        app.page.wait_for_selector("#progress-text >> text=/step \\d+\\/\\d+/", timeout=120000)
        assert app.text("#segment").strip().lower() == "cancel"
        # The middle slices (where the hippocampus is) in work: the preview shows it growing.
        app.page.wait_for_selector("#progress-text >> text=/slices (1[6-9]|2[0-9])/", timeout=300000)
        app.shot("1_running_with_preview")
        app.page.click("#segment")
        app.page.wait_for_selector("#result-text >> text=Cancelled", timeout=120000)
        app.shot("2_cancelled")
        assert app.page.locator("#result").count() == 0
        assert app.page.locator("#download-nii-gz").count() == 0
    finally:
        app.close()


def test_second_session_is_told_busy_and_never_sees_the_first(server, browser):
    image, _ = hippocampus_paths(HIPPOCAMPUS_CASE)
    first = AppPage(browser, server, "session_first")
    try:
        first.upload(image)
        first.segment_enabled()
        other = browser.new_context(viewport={"width": 1000, "height": 600})
        page = other.new_page()
        page.goto(server)
        assert "Someone else is using this segmentation server" in page.inner_text("#busy")
        page.screenshot(path=str(ARTIFACTS / "session_second_busy.png"))
        # Going round the busy page to the app itself: its connection is closed, so nothing of the
        # first session (the page is built from the server's state) ever reaches it.
        page.goto(server + "index.html")
        page.wait_for_timeout(5000)
        assert page.locator("#segment").count() == 0 and "hippocampus" not in page.content()
        other.close()
        assert first.page.locator("#segment:not([disabled])").count() == 1  # the first session carries on
    finally:
        first.close()
    after = AppPage(browser, server, "session_next")
    try:  # the next user starts from nothing
        assert "Load a volume first." in after.text("#status-text")
        after.shot("1_fresh")
    finally:
        after.close()


def _card_dice_at_half_mm() -> float:
    match = re.search(r"brats_2013_pat0006_1 \| input 1 mm -> 0\.5 mm \| ([0-9.]+)", OSSNET_CARD.read_text())
    assert match, f"the model card {OSSNET_CARD} has no 0.5 mm row"
    return float(match.group(1))


def test_ossnet_at_twice_the_resolution_from_the_data_folder(server, browser, tmp_path):
    """The validation case picked from --data, segmented at 2x (0.5 mm); Dice of the label map on the
    input grid against the expert whole tumour, within 0.02 of the model card's 0.5 mm figure."""
    app = AppPage(browser, server, "ossnet")
    try:
        app.choose("model", "OSS-Net whole brain tumour (FLAIR + contrast T1 MRI)")
        for name in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"):
            app.choose("data-file", name)
            app.page.click("#load-data-file")
            app.page.wait_for_timeout(500)
        # Two 240 x 240 x 155 volumes are loaded, checked and drawn in four software-rendered views
        # before Segment is enabled: on a loaded 2-core CI machine that took over a minute once.
        app.segment_enabled(timeout=240000)
        app.set_number("resolution-field", 2)
        app.page.wait_for_selector("#resolution-text >> text=0.5 x 0.5 x 0.5 mm", timeout=30000)
        app.shot("1_loaded")
        app.page.click("#segment")
        app.page.wait_for_selector("#progress-text", timeout=60000)
        app.shot("2_running")
        app.page.wait_for_selector("#result", timeout=1200000)
        app.shot("3_result")
        assert app.page.locator(".segment-name").all_inner_texts() == ["whole tumour"]
        assert "0.5 x 0.5 x 0.5 mm" in app.text("#result-text")
        label_map = app.download("nii-gz", tmp_path / "web.nii.gz")
    finally:
        app.close()
    predicted = _label_map(label_map)
    truth = _label_map(BRATS_CASE / "OTMultiClass.nii.gz") > 0
    assert predicted.shape == truth.shape  # on the input grid, not the 0.5 mm one
    measured, card = dice(predicted == 1, truth), _card_dice_at_half_mm()
    _record("ossnet", f"brats_2013_pat0006_1 at 0.5 mm, label map on the input grid: web Dice {measured:.4f}, "
                      f"model card {card}")
    assert abs(measured - card) <= 0.02, f"web Dice {measured:.4f}, model card at 0.5 mm {card}"

