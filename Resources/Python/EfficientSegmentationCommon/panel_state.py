"""What a Segment panel shows and does, in plain Python (no Qt), shared by both modules.

A module panel has one action button (Segment, which turns into Cancel while a run is under
way), a progress bar with a line of text, and a result line (quality score, or why the run
failed). ``SegmentPanel`` is the panel's state machine and view-model: the widget code feeds
it clicks, the background job's polled status and the result, and copies ``view()`` onto the
Qt widgets. Everything that decides what the user sees lives here and is tested headless.

    idle -> running -> finished | failed | cancelled
               \\-> cancelling -> cancelled (also when the work finished after all)
    finished | failed | cancelled -> running (a new run) or idle (``reset``, e.g. scene closed)

A run has two parts: the computation in a worker thread (``BackgroundJob``), then writing the
result into the scene on the main thread. When the poll sees the computation finished,
``update`` answers ``FINISH`` and the panel stays *running* (with a "writing" message) until
the widget reports ``finished``/``failed``/``cancelled``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .background import JobState, JobStatus

START = "start"
CANCEL = "cancel"
FINISH = "finish"

WARNING_STYLE = "color: #d32f2f; font-weight: bold;"
"""Qt style sheet for the result label when the result signals a likely failure (red text)."""

ERROR_STYLE = "color: #d32f2f;"
"""Qt style sheet for the result label when a run failed."""

_IDLE_TOOLTIP = "Segment the input volume with the selected model."
_CANCEL_TOOLTIP = "Stop the segmentation. The scene is left exactly as it was before the run."
_CANCELLING_TOOLTIP = "Stopping at the next step..."


@dataclass(frozen=True)
class PanelView:
    """Everything the widget copies onto its Qt widgets, for one moment."""

    state: JobState
    button_text: str
    button_enabled: bool
    button_tooltip: str
    settings_enabled: bool  # input and setting widgets are locked while a run is active
    progress_visible: bool
    progress_percent: int  # 0..100
    progress_text: str  # plain text, e.g. "Run 2/10: global step 3/24 (about 1 min left)"
    status_text: str  # why Segment is disabled (the input problem), "" otherwise
    result_text: str
    result_style: str  # "" (normal), WARNING_STYLE or ERROR_STYLE

    @property
    def progress_format(self) -> str:
        """``QProgressBar.format``: the text followed by the percentage (``%p``), '%' escaped."""
        text = self.progress_text.replace("%", "%%")
        return f"{text} (%p%)" if text else "%p%"

    @property
    def result_is_warning(self) -> bool:
        return self.result_style == WARNING_STYLE


@dataclass(frozen=True)
class RunSummary:
    """What the panel reports about a finished run."""

    seconds: float
    quality: Mapping[str, float] = field(default_factory=dict)  # per segment; lower is better
    quality_name: str = "quality score"
    likely_failure: bool = False
    warning_threshold: float | None = None
    warnings: Sequence[str] = ()
    output_name: str = ""
    details: Sequence[str] = ()  # facts about the run, e.g. the output grid and how much was decoded


def format_duration(seconds: float) -> str:
    """A duration as a person says it: '8 s', '2 min 5 s', '1 h 3 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def summary_text(summary: RunSummary) -> tuple[str, str]:
    """The result line and its style: timing and quality score, then the warnings in red when
    there are any (a likely failure, an empty result, an input problem, no quality score): as the
    commands, which report such a result as CHECK rather than ok."""
    done = f"Done in {format_duration(summary.seconds)}"
    if summary.output_name:
        done += f": '{summary.output_name}'"
    lines = [done + "."]
    lines.extend(summary.details)
    if summary.quality:
        scores = ", ".join(f"{name} {value:.3f}" for name, value in summary.quality.items())
        limit = f", warning above {summary.warning_threshold:g}" if summary.warning_threshold is not None else ""
        lines.append(f"{summary.quality_name[:1].upper()}{summary.quality_name[1:]} (lower is better{limit}): {scores}.")
    if summary.likely_failure or summary.warnings:
        details = list(summary.warnings) or [
            "The quality score signals a likely failure: check the segmentation before using it."]
        lines += ["WARNING: " + details[0], *details[1:]]  # one warning per line
        return "\n".join(lines), WARNING_STYLE
    return "\n".join(lines), ""


class SegmentPanel:
    """State machine and view-model of a Segment panel.

    ``clock`` is injectable for tests.
    """

    def __init__(self, action_text: str = "Segment", clock: Callable[[], float] = time.monotonic) -> None:
        self.action_text = action_text
        self._clock = clock
        self.state = JobState.IDLE
        self.fraction = 0.0
        self.message = ""
        self.input_problem = ""
        self.result_text = ""
        self.result_style = ""
        self._started_at: float | None = None

    # -- what the button means -------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.state.active

    @property
    def can_start(self) -> bool:
        return not self.active and not self.input_problem

    def set_input_problem(self, problem: str) -> None:
        """Why the current inputs cannot be segmented ("" when they can); disables Segment."""
        self.input_problem = problem or ""

    def click(self) -> str | None:
        """What a click on the button asks for now: START, CANCEL, or None (disabled)."""
        if self.state is JobState.RUNNING:
            return CANCEL
        if self.state is JobState.CANCELLING:
            return None
        return START if self.can_start else None

    # -- transitions ------------------------------------------------------------------------

    def start(self) -> None:
        """A run begins (the widget then starts the background job)."""
        if self.active:
            raise RuntimeError("a segmentation is already running")
        if self.input_problem:
            raise RuntimeError(self.input_problem)
        self.state = JobState.RUNNING
        self.fraction, self.message = 0.0, "Starting"
        self.result_text, self.result_style = "", ""
        self._started_at = self._clock()

    def cancel(self) -> bool:
        """The user asked to stop; True when that changed anything (the widget then cancels the job)."""
        if self.state is not JobState.RUNNING:
            return False
        self.state = JobState.CANCELLING
        self.message = "Cancelling: stopping at the next step"
        return True

    def report(self, fraction: float, message: str) -> None:
        """Progress of the run (from the polled job, or from the main-thread writing stage).
        Never goes backwards; ignored unless a run is active."""
        if not self.active:
            return
        self.fraction = max(self.fraction, min(max(float(fraction), 0.0), 1.0))
        if self.state is JobState.RUNNING:
            self.message = message

    def update(self, status: JobStatus) -> str | None:
        """Take in a polled ``BackgroundJob`` status. Returns FINISH when the computation has
        finished and its result should now be written into the scene (main thread)."""
        if not self.active:
            return None
        if status.state is JobState.FINISHED:
            if self.state is JobState.CANCELLING:  # finished anyway: honour the cancel, write nothing
                self.cancelled()
                return None
            self.report(status.fraction, "Writing the result into the scene")
            return FINISH
        if status.state is JobState.CANCELLED:
            self.cancelled()
        elif status.state is JobState.FAILED:
            self.failed(status.message or (str(status.error) if status.error else "unknown error"))
        elif status.state in (JobState.RUNNING, JobState.CANCELLING):
            self.report(status.fraction, status.message)
        return None

    def finished(self, summary: RunSummary) -> None:
        """The result is in the scene."""
        self.state = JobState.FINISHED
        self.fraction, self.message = 1.0, "Done"
        self.result_text, self.result_style = summary_text(summary)

    def failed(self, message: str) -> None:
        """The run stopped with an error; ``message`` is shown as it is."""
        self.state = JobState.FAILED
        self.message = "Failed"
        self.result_text, self.result_style = f"Segmentation failed: {message}", ERROR_STYLE

    def cancelled(self) -> None:
        self.state = JobState.CANCELLED
        self.message = "Cancelled"
        self.result_text, self.result_style = "Cancelled; the scene was left as it was.", ""

    def reset(self) -> None:
        """Back to idle, forgetting the last result (e.g. the scene was closed)."""
        self.state = JobState.IDLE
        self.fraction, self.message = 0.0, ""
        self.result_text, self.result_style = "", ""
        self._started_at = None

    # -- what the panel shows ---------------------------------------------------------------

    def progress_text(self) -> str:
        """The progress bar's text: the current stage or step, and an estimate of the time left."""
        if self.state is not JobState.RUNNING:
            return self.message
        text = self.message
        text = text[:1].upper() + text[1:]
        remaining = self.remaining_seconds()
        if remaining is not None:
            text += f" (about {format_duration(remaining)} left)"
        return text

    def remaining_seconds(self) -> float | None:
        """Linear estimate of the time left, once enough of the run is done to judge."""
        if self._started_at is None or not 0.05 <= self.fraction < 1.0:
            return None
        elapsed = self._clock() - self._started_at
        return elapsed * (1.0 - self.fraction) / self.fraction

    def view(self) -> PanelView:
        if self.state is JobState.RUNNING:
            text, enabled, tooltip = "Cancel", True, _CANCEL_TOOLTIP
        elif self.state is JobState.CANCELLING:
            text, enabled, tooltip = "Cancelling...", False, _CANCELLING_TOOLTIP
        else:
            text, enabled = self.action_text, not self.input_problem
            tooltip = self.input_problem or _IDLE_TOOLTIP
        return PanelView(
            state=self.state,
            button_text=text,
            button_enabled=enabled,
            button_tooltip=tooltip,
            settings_enabled=not self.active,
            progress_visible=self.state is not JobState.IDLE,
            progress_percent=int(round(100 * self.fraction)),
            progress_text=self.progress_text(),
            status_text="" if self.active else self.input_problem,
            result_text=self.result_text,
            result_style=self.result_style,
        )


@dataclass(frozen=True)
class ModelItem:
    """One entry of the model combo box: shown text, registry id (item data) and tooltip."""

    text: str
    model_id: str
    tooltip: str
    available: bool


def model_items(entries) -> list[ModelItem]:
    """Combo box items for registry entries; a model whose weights are not installed says so."""
    items = []
    for entry in entries:
        available = entry.path.exists()
        text = entry.title if available else f"{entry.title} (weights not installed)"
        details = [entry.description, f"Version {entry.version}" if entry.version else "",
                   f"License: {entry.license}" if entry.license else "",
                   "" if available else f"Weights file missing: {entry.path}"]
        items.append(ModelItem(text, entry.id, "\n".join(d for d in details if d), available))
    return items


def device_choices(cuda_available: bool) -> list[str]:
    """Devices the Advanced section offers: always the CPU, CUDA when a GPU can be used."""
    return ["cpu", "cuda"] if cuda_available else ["cpu"]
