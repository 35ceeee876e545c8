"""One training phase of one run, from its input files to its output files.

This is the orchestration behind ``backdoor-eval train`` and ``retrain``: it
opens the store, the partitions and the poison overlay, builds the model and
the regularizer from their registries, runs the engine
(:class:`backdoor_eval.train.Engine`) for the phase, and writes the model,
the per-epoch metrics and ``final.json`` atomically (``final.json`` last, so
its presence means the phase finished). The CLI only parses arguments into a
:class:`PhaseJob`.

One process per run phase: :func:`run_phase` holds an exclusive lock
(:mod:`backdoor_eval.locks`) on :attr:`PhaseJob.lock_file`, beside the
checkpoint, from before the checkpoint is read until after it is deleted; a
second process on the same phase (e.g. a rerun beside the orphan of a killed
Snakemake) fails at once, naming the holder, before it writes or deletes
anything. The GPU slot (:func:`backdoor_eval.gpus.gpu_slot`) is taken after
the lock, so such a duplicate never waits for a GPU.

Phases (docs/decisions.md#training): ``poison`` trains the freshly built
model on poison-train with early stopping; ``clean`` fine-tunes the poison
phase's kept model (``init_model``) on clean-train for a fixed number of
epochs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backdoor_eval.names import CLEAN_PHASE, PHASES, POISON_PHASE

if TYPE_CHECKING:  # pandas with it: imported by the job, not by whoever only builds a PhaseJob
    from backdoor_eval.evaluate import FinalDocument

log = logging.getLogger(__name__)


@dataclass
class PhaseJob:
    """Everything one phase reads and writes; paths come from the workflow's rules."""

    phase: str
    store: Path
    partitions: Path
    poisoned: Path
    model: str
    seed: int
    out_model: Path
    out_epochs: Path
    out_final: Path
    model_params: dict[str, Any] = field(default_factory=dict)
    regularizer: str = "none"
    regularizer_params: dict[str, Any] = field(default_factory=dict)
    train_params: dict[str, Any] = field(default_factory=dict)
    init_model: Path | None = None  # the poison phase's model.pt (phase ``clean``)
    checkpoint: Path | None = None  # resumable state, kept outside the declared outputs
    device: str = "auto"
    threads: int | None = None
    gpu_lock_dir: Path | None = None  # take a GPU slot via lock files here (backdoor_eval.gpus)
    jobs_per_gpu: int | None = None  # GPU slots per device (None: $BACKDOOR_EVAL_JOBS_PER_GPU, else 1)
    compile_cache_dir: Path | None = None  # torch.compile's cache (TORCHINDUCTOR_CACHE_DIR), shared by the jobs
    # Phase poison only: a training-set detector's .npz; its flagged poison-train images are left out
    # (filter-then-retrain, docs/detection.md). Everything else, the initial weights included, is as without it.
    exclude: Path | None = None

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase {self.phase!r} is unknown; allowed: {', '.join(PHASES)}")
        if (self.phase == CLEAN_PHASE) != (self.init_model is not None):
            raise ValueError("the clean phase needs the poison phase's model (init_model), and only it")
        if self.exclude is not None and self.phase != POISON_PHASE:
            raise ValueError("--exclude filters the poisoned training set: the poison phase (train) only")

    @property
    def lock_file(self) -> Path | None:
        """The phase's lock, ``<checkpoint>.lock``; none without a checkpoint (nothing shared to
        protect: the outputs are written atomically, and the workflow always gives a checkpoint)."""
        if self.checkpoint is None:
            return None
        return self.checkpoint.with_name(self.checkpoint.name + ".lock")

    @property
    def run_label(self) -> str:
        """The run as messages name it: its folder (``.../runs/<run_id>``)."""
        return str(self.out_final.parent.parent)


@dataclass(frozen=True)
class PhaseFacts:
    """How a phase ran, besides its job and its result: what ``final.json`` records of the run itself."""

    num_train_images: int
    device: str
    gpu_slot: int | None
    seconds_total: float
    train_params: dict[str, Any]
    regularizer_config: Any


def run_phase(job: PhaseJob) -> dict[str, Any]:
    """Run ``job`` and write its three outputs; return the ``final.json`` document.

    Holds the phase's lock throughout (:class:`backdoor_eval.locks.LockHeldError` at once when another
    process holds it), then a GPU slot when ``job.gpu_lock_dir`` is set, except inside a SLURM job,
    where SLURM has assigned the GPUs (:func:`backdoor_eval.gpus.slurm_job_id`).
    """
    from backdoor_eval import gpus, locks

    weights = job.model_params.get("weights")
    if job.phase == POISON_PHASE and job.model_params.get("pretrained") and weights is not None:
        from backdoor_eval.models.weights import check_weights_file

        # before the lock, the GPU slot and the data: a missing weights file is named at once
        check_weights_file(weights, repr(job.model))
    held: contextlib.AbstractContextManager = contextlib.nullcontext()
    if job.lock_file is not None:
        held = locks.hold(job.lock_file, f"the {job.phase} phase of run {job.run_label}")
    with held, gpus.job_slot(job.gpu_lock_dir, job.jobs_per_gpu) as index:
        return _run_locked(job, gpu_slot=index)


def _run_locked(job: PhaseJob, gpu_slot: int | None) -> dict[str, Any]:
    """:func:`run_phase` once the phase's lock (and GPU slot, if any) is held."""
    import numpy as np
    import pandas as pd
    import torch

    from backdoor_eval import seeding
    from backdoor_eval import train as engine
    from backdoor_eval.data import open_store
    from backdoor_eval.hashing import arrays_sha256, json_sha256
    from backdoor_eval.io import write_json, write_parquet
    from backdoor_eval.models import create_model, load_model, save_model
    from backdoor_eval.poison import load_poisoned
    from backdoor_eval.regularizers import create_regularizer
    from backdoor_eval.splits import load_partitions

    tic = time.perf_counter()
    cfg, device = engine.setup_job(job.train_params, job.device, job.threads)
    if cfg.compile and job.compile_cache_dir is not None:
        # The jobs of a config share one cache: a model's kernels are compiled by its first job only.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(job.compile_cache_dir).resolve()))

    # The long jobs verify the store's sha256 (cheap against training): an edited labels.npy is named.
    store = open_store(job.store, verify=True)
    partitions = load_partitions(job.partitions)
    data = load_poisoned(store, partitions, job.poisoned)
    num_classes = len(store.class_names)

    model_params = dict(job.model_params)
    pretrained = model_params.pop("pretrained", False)
    weights = model_params.pop("weights", None)
    if job.phase == CLEAN_PHASE:
        model = load_model(job.init_model, job.model, num_classes, model_params)
    else:
        # Head initialisation is part of the run: seed it.
        torch.manual_seed(seeding.derived_seed(job.seed, "model/init"))
        model = create_model(job.model, num_classes=num_classes, pretrained=pretrained, weights=weights, **model_params)
    regularizer = create_regularizer(job.regularizer, **job.regularizer_params)

    def tensors(name: str):
        images, labels = data.sets[name]
        return (
            engine.to_device_uint8(images, device, cfg.data_on_device),
            torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device if cfg.data_on_device else "cpu"),
        )

    adv_clean = engine.to_device_uint8(data.adv_test_images, device, True)
    sets = engine.EvalSets(
        poison_val=tensors("poison_val"),
        clean_val=tensors("clean_val"),
        adv_clean=adv_clean,
        adv_triggered=engine.triggered_uint8(data.trigger, adv_clean, data.adv_seed),
        adv_source_mask=torch.as_tensor(np.asarray(data.adv_test_source_mask, dtype=bool)),
        poison_class=int(data.poison_class),
    )
    train_set = tensors("poison_train" if job.phase == POISON_PHASE else "clean_train")
    excluded = None
    if job.exclude is not None:
        from backdoor_eval.analyses.registry import read_flagged

        excluded = read_flagged(job.exclude, len(train_set[1]))
        keep = torch.as_tensor(np.setdiff1d(np.arange(len(train_set[1])), excluded))
        train_set = (train_set[0][keep.to(train_set[0].device)], train_set[1][keep.to(train_set[1].device)])
        log.info("left out %d of %d poison-train images (%s)", len(excluded), len(keep) + len(excluded), job.exclude)

    runner = engine.Engine(model, regularizer, cfg, num_classes, device, job.seed)
    # A checkpoint is resumed only under the very settings that wrote it.
    key = json_sha256(
        [
            job.phase,
            str(job.poisoned.resolve()),
            job.model,
            job.model_params,
            job.regularizer,
            job.regularizer_params,
            engine.result_settings(cfg),
            job.seed,
            str(device),
            str(job.init_model.resolve()) if job.init_model is not None else None,
            # Only when filtering, so the key of every other phase is as before.
            *([] if excluded is None else [arrays_sha256([("excluded", excluded)])]),
        ]
    )
    try:
        result = runner.run_phase(job.phase, train_set, sets, job.checkpoint, key)
    except engine.DivergedError as exc:
        raise engine.DivergedError(f"run {job.run_label}: {exc}") from None

    history = pd.DataFrame(result.history)
    facts = PhaseFacts(
        num_train_images=int(len(train_set[1])),
        device=str(device),
        gpu_slot=gpu_slot,
        seconds_total=time.perf_counter() - tic,
        train_params=dataclasses.asdict(cfg),
        regularizer_config=getattr(regularizer, "config", None),
    )
    final = final_document(job, result, history, facts).to_dict()
    save_model(job.out_model, job.model, model_params, num_classes, result.best_state)
    write_parquet(job.out_epochs, history)
    write_json(job.out_final, final)
    if job.checkpoint is not None and job.checkpoint.exists():
        job.checkpoint.unlink()  # the phase is done; its outputs replace the checkpoint
    log.info("%s phase done: kept epoch %d, ASR %.4f", job.phase, result.kept_epoch, final["adversarial_success_rate"])
    if final["untrained"]:
        log.warning("run %s: %s", job.run_label, UNTRAINED_REASON)
    return final


# Why a run is flagged ``untrained`` (docs/decisions.md#untrained-models): said in the train job's log.
UNTRAINED_REASON = (
    "the poison phase kept epoch 0, the model before any update: no epoch beat its poison-validation accuracy. "
    "The run is kept, flagged untrained: true in final.json and runs.parquet, and left out of the tables and "
    "figures (--include-untrained puts it back). Train longer (max_epochs, patience) or with a larger lr"
)


def final_document(job: PhaseJob, result: Any, history: Any, facts: PhaseFacts) -> FinalDocument:
    """The phase's ``final.json``: the kept epoch's metrics and how the phase ran, whether its model is the
    untrained epoch 0 (poison phase only: the clean phase's epoch 0 is the trained poisoned model), and
    which code ran it."""
    from backdoor_eval.evaluate import SUMMARY_METRICS, FinalDocument
    from backdoor_eval.provenance import provenance

    kept = history[history["epoch"] == result.kept_epoch].iloc[0].to_dict()
    return FinalDocument(
        phase=job.phase,
        epoch=result.kept_epoch,
        best_epoch=result.kept_epoch,
        epochs_run=result.epochs_run,
        stopped_early=result.stopped_early,
        untrained=job.phase == POISON_PHASE and result.kept_epoch == 0,
        resumed_from_epoch=result.resumed_from,
        metrics={metric: kept[metric] for metric in SUMMARY_METRICS},
        num_train_images=facts.num_train_images,
        device=facts.device,
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        gpu_slot=facts.gpu_slot,
        seconds_total=facts.seconds_total,
        train_params=facts.train_params,
        model=job.model,
        regularizer=job.regularizer,
        regularizer_config=facts.regularizer_config,
        seed=job.seed,
        **provenance(),
    )
