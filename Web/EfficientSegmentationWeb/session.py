"""One user's work in the web app, without any web code: volumes, model, run, result, downloads.

The web page (``app.py``) is a thin layer over this class, so everything it decides is tested
headless. It drives the same library logic classes as the Slicer panels and the CLIs, in the
same three phases: ``prepare`` reads the scene (main thread, here the server's event loop),
``compute`` runs the model in a ``BackgroundJob`` worker thread, ``finish`` writes the result
into the scene (main thread again). What the user sees of a run (button, progress text,
result line) comes from the shared ``panel_state.SegmentPanel``; the settings are the methods'
own ``MedNCASettings``/``OSSNetSettings`` (their ranges, defaults and validation), and the input
check, resolution line and run summaries come from each module's ``panel`` module: the rules
are the panels', not copies.

A failed load or run leaves the scene as it was (``SceneTransaction`` and the logic's own
all-or-nothing ``finish``); ``reset`` removes everything this session added, so the next user
starts from an empty scene.

A Med-NCA run whose settings ask for it (``MedNCASettings.preview``) shows the automaton's live
preview: the shared ``preview.LivePreview`` (the Slicer panel's) receives the worker's labels
through the logic's ``previewCallback``, ``poll`` writes the latest into a temporary
segmentation node the slice views show, and the node is removed when the run finishes, fails,
is cancelled or the session is reset. A ``.zip`` upload is read as a DICOM series
(``dicom_zip``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from EfficientSegmentationCommon.background import BackgroundJob, JobState
from EfficientSegmentationCommon.batch import write_labels, write_result
from EfficientSegmentationCommon.errors import InputVolumeError
from EfficientSegmentationCommon.geometry import VolumeGeometry
from EfficientSegmentationCommon.panel_state import FINISH, RunSummary, SegmentPanel
from EfficientSegmentationCommon.preview import LivePreview
from EfficientSegmentationCommon.progress import SceneTransaction, scaled
from EfficientSegmentationCommon.registry import ModelEntry
from EfficientSegmentationCommon.scene import load_volume, name_from_path, remove_node
from EfficientSegmentationCommon.segmentation_output import export_segmentation_labels
from EfficientSegmentationCommon.volume_arrays import check_scalar_volume
from MedNCASegmentLib import panel as mednca_panel
from MedNCASegmentLib.logic import MedNCASegmentLogic
from OSSNetSegmentLib import panel as ossnet_panel
from OSSNetSegmentLib.input_names import is_input
from MedNCASegmentLib.settings import MedNCASettings
from OSSNetSegmentLib.logic import OSSNetSegmentLogic
from OSSNetSegmentLib.settings import OSSNetSettings

from .dicom_zip import read_dicom_zip

LOG = logging.getLogger(__name__)

# Share of the progress bar for the computation; the rest is writing the result (as in the panels).
COMPUTE_SHARE = 0.9
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_ZIP_SUFFIX = ".zip"  # an upload with this suffix is a zipped DICOM series
DOWNLOAD_FORMATS = ("seg.nrrd", "nii.gz")
# At most one preview frame this often: each frame is rendered in the page's four views on the
# server's CPU (software OpenGL) and sent to the browser, about 0.5 s of CPU per frame on the
# project's 2-core machine (Testing/Benchmarks/web_preview_benchmark.py).
PREVIEW_FRAME_INTERVAL_S = 2.0


@dataclass(frozen=True)
class SegmentRow:
    """One row of the result table: a segment's name, colour (#rrggbb), volume (mL) and quality score."""

    name: str
    color: str
    volume_ml: float
    quality: float | None


def hex_color(rgb: Sequence[float]) -> str:
    """``(r, g, b)`` in 0..1 as ``#rrggbb``."""
    return "#" + "".join(f"{int(round(255 * min(max(c, 0.0), 1.0))):02x}" for c in rgb)


def list_data_files(folder: Path | None, limit: int = 500) -> list[str]:
    """Image files under ``folder`` (relative POSIX paths, sorted), at most ``limit``; [] without a folder.

    Only these may be loaded from the server's disk: the page sends one of these names, never a path.
    """
    if folder is None:
        return []
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                found.append(Path(root, name).relative_to(folder).as_posix())
                if len(found) >= limit:
                    return found
    return found


class SegmentationSession:
    """The volumes one user loaded, the chosen model and settings, the running job and its result.

    ``scene``: the MRML scene the web views show (trame-slicer's). All methods except the
    job's computation run on the thread that owns the scene.
    """

    def __init__(self, scene) -> None:
        self.scene = scene
        self.logics = {"mednca": MedNCASegmentLogic(scene), "ossnet": OSSNetSegmentLogic(scene)}
        self.panels = {"mednca": SegmentPanel("Segment"), "ossnet": SegmentPanel("Segment")}
        self.panel = self.panels["mednca"]
        self.volumes: dict[str, object] = {}  # node id -> volume node loaded by this session
        self.result = None  # the logic's result of the last finished run
        self.result_entry: ModelEntry | None = None
        self.result_summary: RunSummary | None = None
        self.result_rows: list[SegmentRow] = []
        self.reference_volume = None
        self.load_note = ""  # what the last load wants the user to know (e.g. which DICOM series)
        self.preview: LivePreview | None = None  # the running Med-NCA job's live preview, if it has one
        self.preview_interval = PREVIEW_FRAME_INTERVAL_S
        self._preview_shown_at = -float("inf")
        self._job = BackgroundJob()
        self._prepared = None  # (logic, job) of the running computation

    # -- models -------------------------------------------------------------------------------

    def models(self) -> list[ModelEntry]:
        """All registered models of both methods whose weights are installed."""
        return [entry for logic in self.logics.values() for entry in logic.models() if entry.path.exists()]

    def entry(self, model_id: str) -> ModelEntry:
        """The registry entry of ``model_id``; ``ModelError`` when it is unknown or its weights are missing."""
        return self.logics["mednca"].registry.get(model_id)

    # -- volumes ------------------------------------------------------------------------------

    def load(self, path: str | os.PathLike, name: str | None = None):
        """Load an image file, or a ``.zip`` of one DICOM series (``dicom_zip``), as a volume the
        models can take, or raise ``InputVolumeError`` naming the problem (unreadable or damaged,
        4D or vector, NaNs, no orientation: the shared file checks of ``scene.load_volume``; single
        slice; a zip without a usable DICOM series); the scene is then left as it was.
        ``load_note`` then says what the user should know about the load ("" for most files)."""
        self.load_note = ""
        if os.fspath(path).lower().endswith(DICOM_ZIP_SUFFIX):
            return self._load_dicom_zip(Path(path), name)
        return self._load_file(path, name)

    def _load_dicom_zip(self, path: Path, name: str | None):
        """The zip's DICOM series, converted in a temporary folder that is removed in any case."""
        with tempfile.TemporaryDirectory(prefix="effseg-dicom-") as folder:
            series = read_dicom_zip(path, Path(folder))
            try:
                node = self._load_file(series.image_path, name or series.name)
            except InputVolumeError as error:  # name the user's zip, not the converted file
                raise InputVolumeError(str(error).replace(str(series.image_path), path.name)) from None
        self.load_note = series.note
        return node

    def _load_file(self, path: str | os.PathLike, name: str | None):
        with SceneTransaction(self.scene):
            node = load_volume(self.scene, path, name)
            node.SetName(name or name_from_path(os.fspath(path)))  # the volumes logic may append "_1"
            check_scalar_volume(node)
        self.volumes[node.GetID()] = node
        return node

    def volume(self, node_id: str | None):
        """This session's volume with that node id, or None."""
        return self.volumes.get(node_id) if node_id else None

    def guess_inputs(self, entry: ModelEntry, current: Sequence[str | None]) -> list[str | None]:
        """Node ids for the model's inputs: the current choice where valid, else a volume whose
        name names the input (``*flair*`` for FLAIR), else the only unused volume left."""
        chosen = [node_id if node_id in self.volumes else None for node_id in current]
        chosen = (chosen + [None] * len(entry.inputs))[:len(entry.inputs)]
        for index, input_name in enumerate(entry.inputs):
            if chosen[index] is None:
                for node_id, node in self.volumes.items():
                    if node_id not in chosen and is_input(node.GetName(), input_name):
                        chosen[index] = node_id
                        break
        unused = [node_id for node_id in self.volumes if node_id not in chosen]
        for index in range(len(chosen)):
            if chosen[index] is None and len(entry.inputs) == 1 and unused:
                chosen[index] = unused[-1]  # one input: the newest volume
        return chosen

    def inputs_problem(self, entry: ModelEntry, input_ids: Sequence[str | None]) -> str:
        """Why Segment is disabled for these inputs ("" when it is not), worded as in the panels."""
        volumes = [self.volume(node_id) for node_id in input_ids]
        return ossnet_panel.inputs_problem(volumes, entry.inputs, _volume_problem)

    # -- running ------------------------------------------------------------------------------

    def start(self, entry: ModelEntry, input_ids: Sequence[str | None], settings) -> None:
        """Check the inputs and start the computation in a worker thread. ``settings``: the
        method's ``MedNCASettings`` or ``OSSNetSettings`` (see ``settings_from_page``). An input
        problem becomes the panel's status line, Segment stays disabled and nothing is added."""
        self.panel = self.panels[entry.method]
        problem = self.inputs_problem(entry, input_ids)
        self.panel.set_input_problem(problem)
        if problem:
            return
        self.panel.start()
        logic = self.logics[entry.method]
        volumes = [self.volume(node_id) for node_id in input_ids]
        try:
            job = logic.prepare(volumes[0] if entry.method == "mednca" else volumes, settings)
        except (InputVolumeError, ValueError) as error:
            self.panel.failed(str(error))
            return
        self._prepared = (logic, job, entry, settings)
        self.preview = self._create_preview(entry, job)
        self._preview_shown_at = -float("inf")
        callbacks = {} if self.preview is None else {"previewCallback": self.preview.put}
        self._job.start(lambda progress, cancel: logic.compute(job, scaled(progress, 0.0, COMPUTE_SHARE), cancel,
                                                               **callbacks))

    def _create_preview(self, entry: ModelEntry, job) -> LivePreview | None:
        """A live preview for a Med-NCA job whose settings ask for one; none for a whole head (its
        computation offers no intermediate labels) and for OSS-Net (which has none to offer)."""
        if entry.method != "mednca" or not job.settings.preview or job.mode == "head":
            return None
        return LivePreview(self.scene, job.input_volume, job.full_geometry, job.entry.segments,
                           self.logics["mednca"].METHOD_TITLE)

    def _remove_preview(self) -> None:
        preview, self.preview = self.preview, None
        if preview is not None:
            preview.remove()

    def cancel(self) -> None:
        """Ask the running computation to stop at its next step."""
        if self.panel.cancel():
            self._job.cancel()

    def poll(self) -> JobState:
        """Take in the worker's progress; write the result into the scene once it is computed.
        Returns the panel's state (call again while it is active)."""
        if not self.panel.active or self._prepared is None:
            return self.panel.state
        status = self._job.poll()
        if self.panel.update(status) == FINISH:
            logic, job, entry, settings = self._prepared
            self._prepared = None
            try:
                result = logic.finish(job, status.result, scaled(self.panel.report, COMPUTE_SHARE, 1.0))
            except Exception as error:  # the logic's finish leaves the scene as it was
                self.panel.failed(str(error))
            else:
                self._accept(entry, job, result, settings)
            finally:
                self._remove_preview()
        elif not self.panel.active:  # cancelled or failed
            self._prepared = None
            self._remove_preview()
        elif (self.preview is not None and status.state is JobState.RUNNING
              and time.monotonic() - self._preview_shown_at >= self.preview_interval):
            try:
                if self.preview.show():
                    self._preview_shown_at = time.monotonic()
            except Exception:  # a preview must never stop the run
                LOG.error("the live preview could not be shown:\n%s", traceback.format_exc())
        return self.panel.state

    def wait(self, timeout: float = 600.0) -> JobState:
        """Block until the run has ended (tests, scripts); returns the final state."""
        self._job.wait(timeout)
        return self.poll()

    def _accept(self, entry: ModelEntry, job, result, settings) -> None:
        """A finished run: replace the previous result with it and summarise it."""
        self._remove_result()
        self.result, self.result_entry = result, entry
        self.reference_volume = job.input_volume if entry.method == "mednca" else job.input_volumes[0]
        if entry.method == "mednca":
            summary = mednca_panel.run_summary(result)
        else:
            summary = ossnet_panel.run_summary(result)
        self.result_summary = summary
        self.result_rows = self._rows(entry, result, summary)
        self.panel.finished(summary)

    @staticmethod
    def _rows(entry: ModelEntry, result, summary: RunSummary) -> list[SegmentRow]:
        """Segment names, colours, volumes (mL, on the grid the result was computed on) and scores."""
        voxel_ml = float(np.prod(result.geometry.spacing)) / 1000.0
        return [SegmentRow(spec.name, hex_color(spec.color),
                           int(np.count_nonzero(result.labels == spec.label_value)) * voxel_ml,
                           summary.quality.get(spec.name)) for spec in entry.segments]

    # -- result -------------------------------------------------------------------------------

    def download(self, fmt: str) -> tuple[str, bytes]:
        """The result as ``.seg.nrrd`` or as a NIfTI label map on the input grid: file name and bytes."""
        if self.result is None:
            raise RuntimeError("There is no result to download: segment a volume first.")
        if fmt not in DOWNLOAD_FORMATS:
            raise ValueError(f"unknown format '{fmt}'; choose one of {', '.join(DOWNLOAD_FORMATS)}")
        name = f"{self.reference_volume.GetName()}_{self.result_entry.method}.{fmt}"
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            input_grid = VolumeGeometry.from_volume_node(self.reference_volume)
            # Label maps lie on the uploaded file's own grid (its voxel order and affine) where there is one.
            if fmt == "seg.nrrd" or self.result.geometry.matches(input_grid, atol=1e-4):
                write_result(self.result, path, self.reference_volume)
            else:  # a finer or coarser output grid (OSS-Net): the label map comes on the input's grid
                labels = export_segmentation_labels(self.scene, self.result.segmentation, self.reference_volume,
                                                    self.result_entry.segments)
                write_labels(labels.astype(np.uint8), input_grid, path, self.reference_volume)
            return name, path.read_bytes()

    def _remove_result(self) -> None:
        if self.result is not None:
            remove_node(self.scene, self.result.segmentation)
        self.result, self.result_entry, self.result_summary, self.result_rows = None, None, None, []

    def reset(self) -> None:
        """Forget everything: stop a run (its result is never written), remove this session's
        volumes and result from the scene, back to idle."""
        if self.panel.active:
            self._job.cancel()
            self._job.wait(60)
        self._prepared = None
        self._remove_preview()
        self._remove_result()
        for node in self.volumes.values():
            remove_node(self.scene, node)
        self.volumes.clear()
        self.reference_volume = None
        for panel in self.panels.values():
            panel.reset()


def _volume_problem(volume) -> str:
    try:
        check_scalar_volume(volume)
    except InputVolumeError as error:
        return str(error)
    return ""


def settings_from_page(entry: ModelEntry, values: Mapping):
    """The run's settings for ``entry`` from the page's values: ``runs``, ``trained_steps``,
    ``global_steps``, ``refinement_steps``, ``preview`` (Med-NCA) or ``resolution`` (OSS-Net). Numbers may
    arrive as strings from text fields. ValueError (naming the option and its range) for a bad value."""
    def number(name: str) -> float:
        try:
            return float(values[name])
        except (TypeError, ValueError):
            raise ValueError(f"{name.replace('_', ' ')} must be a number, got '{values[name]}'") from None

    if entry.method == "mednca":
        trained = bool(values["trained_steps"])
        return MedNCASettings(model=entry.id, runs=int(round(number("runs"))),
                              global_steps=None if trained else int(round(number("global_steps"))),
                              refinement_steps=None if trained else int(round(number("refinement_steps"))),
                              preview=bool(values.get("preview", MedNCASettings().preview)))
    return OSSNetSettings(model=entry.id, resolution=number("resolution"))


def slider_range(settings_class: type, name: str) -> tuple[float, float]:
    """A setting's valid range, as its settings class declares it (the panels' slider ranges)."""
    for field in fields(settings_class):
        if field.name == name:
            return field.metadata["range"]
    raise KeyError(name)


def setting_help(settings_class: type, name: str) -> str:
    """A setting's help sentence, as its settings class declares it (the page's tooltips)."""
    for field in fields(settings_class):
        if field.name == name:
            return field.metadata["help"]
    raise KeyError(name)


def page_defaults() -> dict:
    """The page's initial setting values: the settings' defaults, and the panels' for the trained stage steps."""
    mednca = {field.name: field for field in fields(MedNCASettings)}
    return {"runs": MedNCASettings().runs, "trained_steps": True,
            "global_steps": mednca["global_steps"].metadata["panel_default"],
            "refinement_steps": mednca["refinement_steps"].metadata["panel_default"],
            "preview": MedNCASettings().preview, "resolution": OSSNetSettings().resolution}
