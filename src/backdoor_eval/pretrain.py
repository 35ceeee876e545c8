"""Pretraining: a backbone trained once on a configured dataset, the initialisation of the models that name it.

The paper fine-tunes ImageNet-pretrained models at a low learning rate (section 4.3). Where no
weights hub can be reached, or to start from any image set a user has, the workflow's ``pretrain``
rule builds that regime itself (docs/decisions.md#pretraining): it trains an architecture once on
a dataset of the config (e.g. the CIFAR-10 ``train`` split, disjoint from the grid's images), keeps
the epoch with the best held-out accuracy, and writes the backbone (classifier left out) as a
safetensors file with a small JSON manifest beside it. A model entry with ``init: <name>`` starts
from that file with a new classification head, as the paper's ImageNet models do.

The file lives with the fetched weights (``resources/weights/pretrained/``), so every compute job
reads it offline. Its name carries a fingerprint of everything that determines it (the dataset's
entry, the architecture and its parameters, the training settings, the seed and the held-out
share): a change of the pretraining gives a new file, and the train jobs that read it run again.

This module's config functions are light (no torch: the Snakefile imports them at parse time);
:func:`run_pretrain`, the job, imports torch when called.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backdoor_eval import offline
from backdoor_eval.configview import ConfigView, thaw, view
from backdoor_eval.hashing import json_sha256

log = logging.getLogger(__name__)

__all__ = [
    "PRETRAINED_DIR",
    "PretrainJob",
    "holdout_split",
    "manifest_file",
    "model_init",
    "model_weights",
    "pretraining_datasets",
    "pretraining_file",
    "pretraining_settings",
    "run_pretrain",
    "validate",
]

#: Where the ``pretrain`` rule writes backbones, beside the fetched weights (offline for every compute job).
PRETRAINED_DIR = f"{offline.WEIGHTS_DIR}/pretrained"

#: Model parameters that shape only the head or the input, not the backbone's tensors: a model may set
#: them differently from the pretraining it starts from.
HEAD_ONLY_PARAMS = ("drop_rate", "min_input_size")

_DEFAULT_HOLDOUT = 0.1


def pretraining_settings(config: ConfigView | Mapping[str, Any], name: str) -> dict[str, Any]:
    """Everything that determines pretraining ``name``'s weights: the dataset's entry (kind, params,
    classes), the architecture and its parameters, the training settings, the seed and the held-out share."""
    config = view(config)
    spec = config.pretraining.get(name)
    if spec is None:
        declared = ", ".join(config.pretraining) or "none"
        raise ValueError(f"pretraining {name!r} is not declared in config pretraining; declared: {declared}")
    data = config.datasets.get(spec.dataset)
    return {
        "dataset": {
            "kind": data.kind if data else None,
            "params": thaw(data.params) if data else {},
            "classes": list(data.classes) if data and data.classes is not None else None,
        },
        "arch": spec.arch,
        "params": thaw(spec.params),
        "train": thaw(spec.train),
        "seed": int(spec.seed),
        "holdout": float(_DEFAULT_HOLDOUT if spec.holdout is None else spec.holdout),
    }


def pretraining_file(config: ConfigView | Mapping[str, Any], name: str) -> str:
    """The backbone file of pretraining ``name``: ``<PRETRAINED_DIR>/<name>-<12 hex of its settings>.safetensors``."""
    digest = json_sha256(pretraining_settings(config, name))[:12]
    return f"{PRETRAINED_DIR}/{name}-{digest}.safetensors"


def manifest_file(weights_file: str) -> str:
    """The JSON manifest beside a pretrained backbone file."""
    return weights_file.removesuffix(".safetensors") + ".json"


def model_init(config: ConfigView | Mapping[str, Any], model: str) -> str | None:
    """The pretraining a model entry starts from (its ``init:``), or ``None``."""
    spec = view(config).models.get(model)
    return spec.init if spec else None


def model_weights(config: ConfigView | Mapping[str, Any], model: str) -> tuple[str | None, Any]:
    """``(file, fetch)`` for the config's ``model``, as :func:`backdoor_eval.offline.model_weights`, with
    the backbone file of its ``init:`` pretraining (written by the ``pretrain`` rule, nothing to fetch)."""
    config = view(config)
    init = model_init(config, model)
    if init is not None:
        return pretraining_file(config, init), None
    return offline.model_weights(config, model)


def pretraining_datasets(config: Mapping[str, Any]) -> set[str]:
    """The datasets the config's pretrainings read (ingested like the grid's)."""
    return {spec["dataset"] for spec in (config.get("pretraining") or {}).values() if spec and spec.get("dataset")}


def validate(config: Mapping[str, Any], check_registries: bool = False) -> None:
    """Check the ``pretraining`` block and every model's ``init:``; raise ``ValueError`` naming the key.

    With ``check_registries`` each pretraining's architecture and training settings are also checked
    against the package's registries and ``TrainConfig`` (imports torch).
    """
    entries = config.get("pretraining") or {}
    datasets = config.get("datasets") or {}
    for name, spec in entries.items():
        prefix = f"pretraining.{name}"
        if spec.get("dataset") not in datasets:
            raise ValueError(
                f"{prefix}.dataset: {spec.get('dataset')!r} is not declared in config datasets; "
                f"declared: {', '.join(datasets)}"
            )
        holdout = spec.get("holdout", _DEFAULT_HOLDOUT)
        if not 0 < holdout < 1:
            raise ValueError(f"{prefix}.holdout: {holdout!r} is not a share; allowed: 0 < holdout < 1")
        if check_registries:
            _check_registries(prefix, spec)
    for model, spec in (config.get("models") or {}).items():
        init = (spec or {}).get("init")
        if init is None:
            continue
        key = f"models.{model}.init"
        if init not in entries:
            raise ValueError(
                f"{key}: {init!r} is not declared in config pretraining; declared: {', '.join(entries) or 'none'}"
            )
        if spec.get("pretrained") or spec.get("weights") is not None:
            raise ValueError(f"{key}: a model starts from one source of weights; drop pretrained/weights, or init")
        arch, source = str(spec.get("arch") or model), entries[init]
        if arch != source.get("arch"):
            raise ValueError(
                f"models.{model}.arch: {arch!r} cannot start from pretraining {init!r}, which trains "
                f"{source.get('arch')!r}; allowed: the same architecture"
            )
        params, trained = dict(spec.get("params") or {}), dict(source.get("params") or {})
        for param in sorted((set(params) | set(trained)) - set(HEAD_ONLY_PARAMS)):
            if params.get(param) != trained.get(param):
                raise ValueError(
                    f"models.{model}.params.{param}: {params.get(param)!r} differs from pretraining.{init}.params."
                    f"{param} ({trained.get(param)!r}); the backbone must be the one pretrained (only "
                    f"{', '.join(HEAD_ONLY_PARAMS)} may differ)"
                )


def _check_registries(prefix: str, spec: Mapping[str, Any]) -> None:
    from backdoor_eval.models import MODELS
    from backdoor_eval.models.timm_models import TIMM_PREFIX
    from backdoor_eval.train import TrainConfig

    arch = str(spec.get("arch"))
    if not arch.startswith(TIMM_PREFIX) and arch not in MODELS:
        raise ValueError(
            f"{prefix}.arch: {arch!r} is not registered in backdoor_eval.models.MODELS; "
            f"registered: {', '.join(MODELS.names())}, or 'timm:<name>'"
        )
    train = dict(spec.get("train") or {})
    try:
        TrainConfig.from_dict(train)
    except ValueError as exc:
        key = next((k for k in train if _fails(k, train[k])), None)
        raise ValueError(f"{prefix}.train{'.' + key if key else ''}: {exc}") from None


def _fails(key: str, value: Any) -> bool:
    from backdoor_eval.train import TrainConfig

    try:
        TrainConfig.from_dict({key: value})
    except ValueError:
        return True
    return False


# --------------------------------------------------------------------------- the job


def holdout_split(labels, share: float, seed: int):
    """``(train, holdout)`` image indices: ``round(share * n_c)`` images of each class ``c`` held out
    (at least one, and one left to train on), drawn from the seed; both sorted."""
    import numpy as np

    from backdoor_eval import seeding

    rng = seeding.rng(seed, "pretrain/holdout")
    labels = np.asarray(labels)
    held = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        count = min(max(1, round(share * len(members))), len(members) - 1)
        held.append(members[:count])
    holdout = np.sort(np.concatenate(held)) if held else np.empty(0, np.int64)
    train = np.setdiff1d(np.arange(len(labels)), holdout)
    return train, holdout


@dataclass
class PretrainJob:
    """What one ``pretrain`` job reads and writes; paths come from the workflow's rule."""

    name: str
    store: Path
    arch: str
    out_weights: Path
    out_manifest: Path
    model_params: dict[str, Any]
    train_params: dict[str, Any]
    seed: int = 0
    holdout: float = _DEFAULT_HOLDOUT
    checkpoint: Path | None = None
    device: str = "auto"
    threads: int | None = None
    gpu_lock_dir: Path | None = None


def run_pretrain(job: PretrainJob) -> dict[str, Any]:
    """Train ``job.arch`` on the store (minus the held-out share) with early stopping on held-out
    accuracy; write the best epoch's backbone and the manifest; return the manifest.

    The training settings are :class:`backdoor_eval.train.TrainConfig`'s (``max_epochs`` caps the
    epochs, ``patience`` stops after that many epochs without a better held-out accuracy; epoch 0,
    the untrained model, is recorded but never kept). Resumable from ``job.checkpoint`` like a run's
    phase, under the same lock discipline (:mod:`backdoor_eval.locks`).
    """
    import contextlib

    from backdoor_eval import gpus, locks
    from backdoor_eval.io import check_writable

    for path, option in ((job.out_weights, "--out-weights"), (job.out_manifest, "--out-manifest")):
        check_writable(path, option)
    with contextlib.ExitStack() as stack:
        if job.checkpoint is not None:
            check_writable(job.checkpoint, "--checkpoint")
            stack.enter_context(
                locks.hold(job.checkpoint.with_name(job.checkpoint.name + ".lock"), f"pretraining {job.name}")
            )
        stack.enter_context(gpus.job_slot(job.gpu_lock_dir))
        return _run_locked(job)


def _run_locked(job: PretrainJob) -> dict[str, Any]:
    import numpy as np
    import torch

    from backdoor_eval import __version__, seeding
    from backdoor_eval import evaluate as metrics
    from backdoor_eval import train as engine
    from backdoor_eval.data import open_store
    from backdoor_eval.io import write_json
    from backdoor_eval.models import create_model
    from backdoor_eval.models.weights import save_backbone_weights
    from backdoor_eval.regularizers import create_regularizer

    tic = time.perf_counter()
    cfg, device = engine.setup_job(job.train_params, job.device, job.threads)
    store = open_store(job.store, verify=True)
    train_idx, holdout_idx = holdout_split(store.labels, job.holdout, job.seed)
    num_classes = store.num_classes

    torch.manual_seed(seeding.derived_seed(job.seed, "pretrain/init"))
    model = create_model(job.arch, num_classes=num_classes, pretrained=False, **job.model_params)
    runner = engine.Engine(model, create_regularizer("none"), cfg, num_classes, device, job.seed)
    optimizer = engine.OPTIMIZERS.get(cfg.optimizer)(runner.model.parameters(), cfg, cfg.lr)

    def on_device(indices):
        images = engine.to_device_uint8(store.images[indices], device, cfg.data_on_device)
        labels = torch.as_tensor(store.labels[indices], dtype=torch.long)
        return images, labels.to(device if cfg.data_on_device else "cpu")

    train_images, train_labels = on_device(train_idx)
    holdout_images = engine.to_device_uint8(store.images[holdout_idx], device, True)
    holdout_labels = np.asarray(store.labels[holdout_idx])

    fingerprint = json_sha256(
        [
            "pretrain",
            store.manifest["sha256"],
            job.arch,
            job.model_params,
            engine.result_settings(cfg),
            job.seed,
            job.holdout,
        ]
    )
    stopper = engine.EarlyStopping(cfg.patience)
    history: list[dict[str, Any]] = []
    best_state = engine._clone_state(runner.model)
    start = 0
    state = engine._load_checkpoint(job.checkpoint, fingerprint, runner.model.state_dict())
    if state is not None:
        runner.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best_state, history = state["best_state"], state["history"]
        stopper = engine.EarlyStopping(**state["stopper"])
        start = state["epoch"] + 1
        log.info("resuming pretraining %s after epoch %d", job.name, state["epoch"])

    saved_at = time.monotonic()
    for epoch in range(start, cfg.max_epochs + 1):
        if epoch > 0 and stopper.should_stop:
            break
        epoch_tic = time.perf_counter()
        torch.manual_seed(seeding.derived_seed(job.seed, "pretrain/torch", epoch))
        generator = torch.Generator().manual_seed(seeding.derived_seed(job.seed, "pretrain/data", epoch))
        loss = float("nan")
        if epoch > 0:
            loss = float(runner.train_epoch(optimizer, train_images, train_labels, generator))
            engine._check_finite(runner.model, loss, "pretrain", epoch, cfg.lr)
        accuracy = metrics.accuracy(runner.predict(holdout_images).cpu().numpy(), holdout_labels)
        if epoch > 0 and stopper.update(epoch, accuracy):  # the untrained epoch 0 is never kept
            best_state = engine._clone_state(runner.model)
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss,
                "holdout_accuracy": accuracy,
                "seconds": time.perf_counter() - epoch_tic,
            }
        )
        log.info("pretrain %s epoch %d: loss %.4f held-out accuracy %.4f", job.name, epoch, loss, accuracy)
        # At most every checkpoint_every_s seconds, as a run's phase does; the outputs follow the last epoch.
        if job.checkpoint is not None and time.monotonic() - saved_at >= cfg.checkpoint_every_s:
            saved_at = time.monotonic()
            engine._save_checkpoint(
                job.checkpoint,
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": runner.model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "best_state": best_state,
                    "stopper": dataclasses.asdict(stopper),
                    "history": history,
                },
            )

    runner.model.load_state_dict(best_state)
    best = next(row for row in history if row["epoch"] == stopper.best_epoch)
    count = save_backbone_weights(
        runner.model.backbone, job.out_weights, model=job.arch, source=f"pretraining {job.name}"
    )
    manifest = {
        "name": job.name,
        "arch": job.arch,
        "model_params": job.model_params,
        "store_sha256": store.manifest["sha256"],
        "class_names": list(store.class_names),
        "num_train_images": int(len(train_idx)),
        "num_holdout_images": int(len(holdout_idx)),
        "holdout": job.holdout,
        "seed": job.seed,
        "train_params": dataclasses.asdict(cfg),
        "best_epoch": int(stopper.best_epoch),
        "epochs_run": int(history[-1]["epoch"]),
        "holdout_accuracy": float(best["holdout_accuracy"]),
        "tensors": count,
        "device": str(device),
        "seconds_total": time.perf_counter() - tic,
        "package_version": __version__,
        "history": history,
    }
    write_json(job.out_manifest, manifest)
    if job.checkpoint is not None and job.checkpoint.exists():
        job.checkpoint.unlink()
    log.info(
        "pretraining %s done: kept epoch %d, held-out accuracy %.4f",
        job.name,
        stopper.best_epoch,
        best["holdout_accuracy"],
    )
    return manifest
