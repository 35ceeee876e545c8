"""A work-around for Snakemake's local scheduler: at most one pending re-evaluation timer.

Snakemake 9 (read on 9.27.1) ends every scheduling pass, when its job rate limiter is on (the default:
``--max-jobs-per-timespan 100/1s``), by starting a ``threading.Timer`` that wakes the scheduler again
after the timespan. That wake-up runs a pass, which starts another timer. A finished job wakes the
scheduler too, so every finished job adds one more timer that renews itself for the rest of the run:
after N jobs the main process runs about N passes a second, each checking the input files of every
ready job. On the real CIFAR-10 grid (561 jobs, 2 cores) the main process held 160 threads and had
used 30 CPU-minutes after 85 minutes, taking that share of a core from the training jobs
(docs/performance.md#the-snakemake-main-process).

:func:`limit_reevaluation_timers` replaces the timer start with one that does nothing while a timer
is pending. The rate limiter keeps its meaning: a pass blocked by it is still followed by another
within the timespan. The Snakefile applies it in the main process; a Snakemake without the method
(renamed or fixed upstream) is left as it is.
"""

from __future__ import annotations

import threading

_MARK = "_backdoor_eval_one_timer"
_PENDING = "_backdoor_eval_timer_pending"


def limit_reevaluation_timers() -> bool:
    """Patch Snakemake's ``JobScheduler`` as the module docstring says; True if it was patched now."""
    try:
        from snakemake.scheduling.job_scheduler import JobScheduler
    except ImportError:
        return False
    original = getattr(JobScheduler, "_schedule_reevalutation", None)
    if original is None or getattr(original, _MARK, False):
        return False

    def schedule_one_reevaluation(self, delay) -> None:
        if getattr(self, _PENDING, False):
            return
        setattr(self, _PENDING, True)

        def wake() -> None:
            # Cleared before the wake-up, so the pass it starts can schedule the next timer.
            setattr(self, _PENDING, False)
            self._open_jobs.release()

        timer = threading.Timer(delay, wake)
        timer.daemon = True
        timer.start()

    setattr(schedule_one_reevaluation, _MARK, True)
    JobScheduler._schedule_reevalutation = schedule_one_reevaluation
    return True
