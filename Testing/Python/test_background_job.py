"""The panel's process states, driven headless: idle, running, cancelling, finished, cancelled, failed."""

from __future__ import annotations

import threading

import pytest

from EfficientSegmentationCommon.background import BackgroundJob, JobState
from EfficientSegmentationCommon.errors import CancelledError


def test_a_job_runs_in_the_background_and_finishes() -> None:
    job = BackgroundJob()
    assert job.state is JobState.IDLE
    release = threading.Event()

    def work(progress, cancel):
        progress(0.5, "half")
        release.wait(5)
        return 42

    job.start(work)
    assert job.state is JobState.RUNNING
    with pytest.raises(RuntimeError, match="already running"):
        job.start(work)
    release.set()
    status = job.wait(5)
    assert status.state is JobState.FINISHED and status.result == 42 and status.fraction == 1.0


def test_cancel_moves_through_cancelling_to_cancelled() -> None:
    job = BackgroundJob()
    started = threading.Event()

    def work(progress, cancel):
        started.set()
        while True:
            cancel.raise_if_set()
            progress(0.1, "working")

    job.start(work)
    started.wait(5)
    job.cancel()
    assert job.poll().state in (JobState.CANCELLING, JobState.CANCELLED)
    assert job.wait(5).state is JobState.CANCELLED
    job.start(lambda progress, cancel: "again")  # a new run is possible afterwards
    assert job.wait(5).result == "again"


def test_failure_is_reported_with_its_error_and_progress_never_goes_back() -> None:
    job = BackgroundJob()
    seen = []

    def work(progress, cancel):
        progress(0.6, "far")
        progress(0.3, "back?")
        seen.append(job.poll().fraction)
        raise ValueError("input volume 'x' is an RGB volume")

    job.start(work)
    status = job.wait(5)
    assert seen == [0.6]
    assert status.state is JobState.FAILED and "RGB" in str(status.error)


def test_cancelled_error_from_work_counts_as_cancelled() -> None:
    job = BackgroundJob()

    def work(progress, cancel):
        raise CancelledError("stop")

    job.start(work)
    assert job.wait(5).state is JobState.CANCELLED
