"""What the workflow checks and tidies before any job, as functions the Snakefile calls and the tests reach.

Each returns what it found, and the Snakefile (``workflow/rules/common.smk``)
logs it: the messages are the same whether a dry run or a real one asks.

- :func:`cuda_warning`: ``device: cuda`` where no GPU is visible (a head
  node may have none while its compute nodes do: a warning, not an error);
- :func:`check_poison_counts`: every run poisons at least one image, for
  the datasets whose class sizes are known before their ingest job;
- :func:`retraining_warning`: finished poison phases that must train again,
  because their runs now need clean retraining and their ``model.pt`` was
  deleted (``keep_models: false``);
- :func:`phases_running_elsewhere` and :func:`clean_up`: at start, the
  training phases still held by processes of a killed run, and the removal
  of what killed writes left (except in those phases' folders).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from backdoor_eval.configview import ConfigView, thaw, view
from backdoor_eval.io import remove_stale_temporaries
from backdoor_eval.layout import Layout
from backdoor_eval.locks import held_locks, read_holder
from backdoor_eval.names import CLEAN_PHASE, POISON_PHASE


def cuda_warning(device: str | None, cuda_available: bool | None = None) -> str | None:
    """The warning for ``device: cuda`` where no GPU is visible (``cuda_available``: asked of torch when
    ``None``), or ``None``."""
    if device != "cuda":
        return None
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if cuda_available:
        return None
    return (
        "device: cuda, but no GPU is visible here; the train and retrain jobs will fail unless they run "
        "where one is (a cluster's GPU nodes). Use device: auto to train on the CPU when there is none."
    )


def known_class_counts(config: ConfigView | Mapping[str, Any], layout: Layout) -> dict[str, list[int]]:
    """Images per class of each dataset whose sizes are known before its ingest job (or after it)."""
    from backdoor_eval.data import known_class_counts as dataset_class_counts

    counts = {}
    for name, spec in view(config).datasets.items():
        known = dataset_class_counts(layout.store.format(dataset=name), spec.kind, thaw(spec.params))
        if known is not None:
            counts[name] = known
    return counts


def check_poison_counts(config: ConfigView | Mapping[str, Any], layout: Layout, expanded: Mapping[str, list]) -> None:
    """A run that would poison no image is a config mistake: a ``ValueError`` before any job where the class
    sizes are known (synthetic, the official CIFAR-10, any ingested store); for a dataset not yet ingested,
    its poison job fails with the same message."""
    from backdoor_eval.validation import check_poison_counts as check

    config = view(config)
    check(config, known_class_counts(config, layout), expanded)


def poison_phases_to_train_again(layout: Layout, retrain_run_ids: Iterable[str]) -> list[str]:
    """Finished poison phases that must train again: a run now asks for clean retraining, and its model.pt,
    temporary with keep_models: false, was deleted once nothing needed it."""
    return [
        run_id
        for run_id in sorted(retrain_run_ids)
        if os.path.exists(layout.phase_file(POISON_PHASE, "final", run_id))
        and not os.path.exists(layout.phase_file(POISON_PHASE, "model", run_id))
        and not os.path.exists(layout.phase_file(CLEAN_PHASE, "final", run_id))
    ]


def retraining_warning(layout: Layout, retrain_run_ids: Iterable[str]) -> str | None:
    """Said before any job (a dry run too), so it is not first seen on the GPU bill."""
    again = poison_phases_to_train_again(layout, retrain_run_ids)
    if not again:
        return None
    return (
        f"{len(again)} finished poison phase(s) will be trained again, because their runs now need clean "
        f"retraining and their model.pt was deleted after training (keep_models: false); e.g. {again[0]}. "
        "Set keep_models: true before a later experiment adds retraining to keep them."
    )


def phases_running_elsewhere(layout: Layout) -> list[tuple[str, str, str]]:
    """(run_id, phase, holder) of the training phases some process runs now, before any job of ours:
    the orphans of a killed Snakemake (their phase lock, backdoor_eval.phase.run_phase, is held)."""
    checkpoints = layout.checkpoint_root
    running = []
    for lock in held_locks(checkpoints, "*.lock"):
        run_id = lock.parent.relative_to(checkpoints).as_posix()
        holder = read_holder(lock) or {}
        running.append((run_id, lock.name.split(".", 1)[0], f"pid {holder.get('pid')} on {holder.get('host')}"))
    return running


def clean_up(layout: Layout) -> list[tuple[str, str]]:
    """At the workflow's start, before any job of ours: the (level, message) pairs to log. Warns of phases
    still running elsewhere, and removes the half-written files of killed jobs (a NASNet checkpoint is
    hundreds of MB) everywhere but in those phases' folders."""
    messages = []
    running = phases_running_elsewhere(layout)
    if running:
        run_id, phase, holder = running[0]
        messages.append(
            (
                "warning",
                f"{len(running)} training phase(s) are still running in processes this Snakemake did not start "
                f"(left by a killed run?), e.g. the {phase} phase of {run_id} ({holder}). If scheduled again, "
                "their jobs fail at once with a lock message; wait for those processes to finish, or kill them, "
                "then run the workflow again (README.md: When something goes wrong).",
            )
        )
    busy = [f"{layout.checkpoint_root}/{run_id}" for run_id, _, _ in running]
    busy += [os.path.dirname(layout.phase_file(phase, "final", run_id)) for run_id, phase, _ in running]
    removed, size = remove_stale_temporaries(layout.root, keep=busy)
    if removed:
        messages.append(
            (
                "info",
                f"removed {removed} temporary file(s) left by killed jobs ({size / 1e6:.1f} MB) under {layout.root}",
            )
        )
    return messages


def splits_to_rebuild(
    config: ConfigView | Mapping[str, Any], layout: Layout, runs: Iterable[Any]
) -> dict[str, list[str]]:
    """Partition files deleted after runs of their split finished: rebuilding one retrains every run of
    the split (its poison jobs and train jobs read it). ``{partitions file: [finished run ids]}``."""
    config = view(config)
    missing: dict[str, list[str]] = {}
    for run in runs:
        partitions = layout.partitions.format(dataset=run.dataset, split=config.split_of(run))
        finished = os.path.exists(layout.phase_file(POISON_PHASE, "final", run.run_id))
        if finished and not os.path.exists(partitions):
            missing.setdefault(partitions, []).append(run.run_id)
    return missing


def rebuilt_splits_warning(config: ConfigView | Mapping[str, Any], layout: Layout, runs: Iterable[Any]) -> str | None:
    """Said before any job: finished runs that a deleted partitions file will train again."""
    rebuilt = splits_to_rebuild(config, layout, runs)
    if not rebuilt:
        return None
    return (
        f"{len(rebuilt)} partitions file(s) were deleted after runs of their split finished, e.g. {sorted(rebuilt)[0]}; "
        f"rebuilding them will train again {sum(map(len, rebuilt.values()))} finished run(s) of those splits "
        "(the partitions are rebuilt identically, but they are newer than the runs). Restore the file(s) from a "
        "backup, or accept the retraining."
    )


def check_results_writable(layout: Layout) -> None:
    """A read-only results folder: one line now, not a traceback from the first job or the clean-up."""
    from backdoor_eval.io import check_writable

    check_writable(f"{layout.root}/.write-check", f"results folder {layout.root}:")


def interrupted_message(log_text: str) -> str | None:
    """At the end of a workflow that stopped: when its log shows no failed job, it was stopped (SIGTERM,
    a second Ctrl-C, ``scancel`` of the submitting job), and Snakemake's own closing line, "At least one
    job did not complete successfully", would read as a failure. The message that says what happened, or
    ``None`` when a job did fail (Snakemake's error report then stands)."""
    if "Error in rule" in log_text or "Error in group" in log_text:
        return None
    return (
        "No job failed: the workflow was stopped (SIGTERM or Ctrl-C) and finished or cancelled the jobs that "
        "were running, so Snakemake's 'At least one job did not complete successfully' means only that some "
        "were left to run. Nothing finished is lost, and a stopped train or retrain job resumes from its last "
        "checkpoint: run the same command again."
    )
