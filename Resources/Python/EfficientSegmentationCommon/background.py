"""Running a long computation off Slicer's main thread, with explicit states and cancel.

Slicer must stay responsive while a model runs, and MRML may only be touched on the main
thread. So a job is split: the caller prepares inputs on the main thread, ``BackgroundJob``
runs the pure computation (numpy/torch, no MRML) in a worker thread, and the main thread polls
it from a timer (``poll``) to update the progress bar and, when it is done, to write results.

The state machine is plain Python, so the panel's behaviour is tested headless:

    idle -> running -> finished | failed | cancelled
               \\-> cancelling -> cancelled | finished | failed
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import CancelledError
from .progress import CancelRequest


class JobState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    CANCELLING = "cancelling"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        return self in (JobState.RUNNING, JobState.CANCELLING)


@dataclass
class JobStatus:
    """A snapshot for the GUI: state, latest progress, and the result or error once ended."""

    state: JobState
    fraction: float
    message: str
    result: Any = None
    error: BaseException | None = None


class BackgroundJob:
    """One computation ``work(progress, cancel)`` in a daemon thread; thread-safe ``poll`` and ``cancel``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status = JobStatus(JobState.IDLE, 0.0, "")
        self._cancel = CancelRequest()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> JobState:
        with self._lock:
            return self._status.state

    def start(self, work: Callable[[Callable[[float, str], None], CancelRequest], Any]) -> None:
        """Start ``work`` unless a job is already active (a second click must not start two)."""
        with self._lock:
            if self._status.state.active:
                raise RuntimeError("a segmentation is already running")
            self._cancel = CancelRequest()
            self._status = JobStatus(JobState.RUNNING, 0.0, "Starting")
        self._thread = threading.Thread(target=self._run, args=(work, self._cancel), daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Ask the work to stop at its next step; the state becomes cancelling until it has."""
        with self._lock:
            if self._status.state is JobState.RUNNING:
                self._status.state = JobState.CANCELLING
                self._status.message = "Cancelling"
                self._cancel.cancel()

    def poll(self) -> JobStatus:
        """The current status (a copy), for a timer on the main thread."""
        with self._lock:
            s = self._status
            return JobStatus(s.state, s.fraction, s.message, s.result, s.error)

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Block until the worker ends (tests and scripts); returns the final status."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.poll()

    def _progress(self, fraction: float, message: str) -> None:
        with self._lock:
            self._status.fraction = max(self._status.fraction, min(1.0, fraction))
            self._status.message = message

    def _run(self, work, cancel: CancelRequest) -> None:
        try:
            result = work(self._progress, cancel)
        except CancelledError as error:
            self._end(JobState.CANCELLED, error=error, message="Cancelled")
        except Exception as error:  # shown to the user by the panel
            self._end(JobState.FAILED, error=error, message=str(error))
        else:
            self._end(JobState.FINISHED, result=result, message="Done")

    def _end(self, state: JobState, message: str, result: Any = None, error: BaseException | None = None) -> None:
        with self._lock:
            self._status = JobStatus(state, 1.0 if state is JobState.FINISHED else self._status.fraction,
                                     message, result, error)
