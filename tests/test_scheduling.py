"""The scheduler work-around (backdoor_eval.scheduling) against Snakemake's own JobScheduler class."""

from __future__ import annotations

import threading
import time

import pytest

from backdoor_eval import scheduling

job_scheduler = pytest.importorskip("snakemake.scheduling.job_scheduler")


@pytest.fixture
def patched(monkeypatch):
    """JobScheduler with the work-around applied, restored afterwards."""
    monkeypatch.setattr(
        job_scheduler.JobScheduler, "_schedule_reevalutation", job_scheduler.JobScheduler._schedule_reevalutation
    )
    assert scheduling.limit_reevaluation_timers() is True
    return job_scheduler.JobScheduler


class FakeScheduler:
    """What the timer touches: the semaphore the scheduling loop waits on."""

    def __init__(self):
        self._open_jobs = threading.Semaphore(0)


def timer_threads() -> int:
    return sum(isinstance(thread, threading.Timer) for thread in threading.enumerate())


def wake_ups(scheduler: FakeScheduler, wait: float) -> int:
    count = 0
    deadline = time.monotonic() + wait
    while scheduler._open_jobs.acquire(timeout=max(deadline - time.monotonic(), 0.001)):
        count += 1
    return count


def test_snakemake_still_has_the_method_the_work_around_replaces():
    # If this fails, Snakemake renamed or removed it: read the new scheduler before changing the patch.
    assert callable(getattr(job_scheduler.JobScheduler, "_schedule_reevalutation", None))


def test_many_passes_leave_one_timer_pending_and_one_wake_up(patched):
    scheduler = FakeScheduler()
    before = timer_threads()
    for _ in range(50):  # 50 scheduling passes before the timespan ends
        patched._schedule_reevalutation(scheduler, 0.2)
    assert timer_threads() - before == 1
    assert wake_ups(scheduler, 0.6) == 1


def test_the_pass_a_wake_up_starts_schedules_the_next_timer(patched):
    scheduler = FakeScheduler()
    for _ in range(3):
        patched._schedule_reevalutation(scheduler, 0.05)
        assert wake_ups(scheduler, 0.5) == 1  # each wake-up came, so a blocked rate limit is retried


def test_patching_twice_is_a_no_op(patched):
    method = patched._schedule_reevalutation
    assert scheduling.limit_reevaluation_timers() is False
    assert patched._schedule_reevalutation is method
