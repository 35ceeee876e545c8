"""One analysis of one run, from its files to its result files (``backdoor-eval analyze``).

Opens the store, the partitions and the poison overlay, rebuilds the run's
trained poison-phase model from its ``model.pt`` (when the analysis needs
one), runs the registered analysis and writes its row
(``runs/<run_id>/analyses/<method>.parquet``: the run's factors, the
method, its parameters as JSON and its numbers) and its per-sample arrays
(``<method>.npz``), both atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class AnalysisJob:
    method: str
    store: Path
    partitions: Path
    poisoned: Path
    run_params: dict[str, Any]  # run_id and the run's factors
    out_result: Path
    out_details: Path
    params: dict[str, Any] = field(default_factory=dict)
    model_file: Path | None = None
    model: str | None = None
    model_params: dict[str, Any] = field(default_factory=dict)
    train_params: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    threads: int | None = None
    gpu_lock_dir: Path | None = None


def run_analysis(job: AnalysisJob) -> dict[str, Any]:
    """Run ``job`` and write its two files; return the result row."""
    from backdoor_eval import gpus
    from backdoor_eval.analyses import ANALYSES

    analysis = ANALYSES.create(job.method, **job.params)  # bad names and parameters before any work
    if analysis.needs_model and (job.model_file is None or job.model is None):
        raise ValueError(f"analysis {job.method} needs the run's model: give --model-file and --model")
    slot: contextlib.AbstractContextManager = contextlib.nullcontext(None)
    if analysis.needs_model and job.gpu_lock_dir is not None and gpus.slurm_job_id() is None:
        slot = gpus.gpu_slot(lock_dir=job.gpu_lock_dir)
    with slot:
        return _run(job, analysis)


def _run(job: AnalysisJob, analysis: Any) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    import torch

    from backdoor_eval import train as engine
    from backdoor_eval.analyses.inputs import AnalysisInputs
    from backdoor_eval.data import open_store
    from backdoor_eval.experiments import Run
    from backdoor_eval.io import write_npz, write_parquet
    from backdoor_eval.poison import load_poisoned
    from backdoor_eval.splits import load_partitions

    tic = time.perf_counter()
    run = Run.from_mapping(job.run_params)
    if job.threads:
        torch.set_num_threads(job.threads)
    store = open_store(job.store)
    data = load_poisoned(store, load_partitions(job.partitions), job.poisoned)
    inputs = AnalysisInputs(data=data, seed=run.seed)
    if analysis.needs_model:
        from backdoor_eval.models import load_model

        cfg = engine.TrainConfig.from_dict(job.train_params)
        device = engine.pick_device(job.device)
        params = {k: v for k, v in job.model_params.items() if k not in ("pretrained", "weights")}
        model = load_model(job.model_file, job.model, len(store.class_names), params, "--model-file").to(device)
        default_cfg = getattr(model, "default_cfg", {}) or {}
        cfg.channels_last = False  # float32 and plain layout: see backdoor_eval.analyses.inputs
        inputs.model = model
        inputs.prepare = engine.BatchPreparer(
            default_cfg.get("mean", (0.5, 0.5, 0.5)), default_cfg.get("std", (0.5, 0.5, 0.5)), device, cfg
        )
        inputs.batch_size = cfg.eval_batch_size
    result = analysis.run(inputs)
    row = {
        "run_id": run.run_id,
        **run.params(),
        "method": job.method,
        "kind": analysis.kind,
        "params": json.dumps(analysis.params, sort_keys=True),
        **result.row,
        "seconds": time.perf_counter() - tic,
    }
    write_npz(job.out_details, **{k: np.asarray(v) for k, v in result.arrays.items()})
    write_parquet(job.out_result, pd.DataFrame([row]))
    log.info(
        "%s of %s: AUROC %.4f (%.1fs, CUDA_VISIBLE_DEVICES=%s)",
        job.method,
        run.run_id,
        row.get("auroc", float("nan")),
        row["seconds"],
        os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    return row
