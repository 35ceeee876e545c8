"""The training engine: poisoned training with early stopping, clean retraining.

Paper section 3 ("Training procedure") and docs/decisions.md#training:
- phase ``poison``: train on poison-train until early stopping (no
  improvement of poison-validation accuracy, measured against the poisoned
  labels, for ``patience`` epochs; ``max_epochs`` cap); keep the best epoch's
  weights;
- phase ``clean``: fine-tune the kept model on clean-train for a fixed
  number of epochs (``retrain_epochs``).
Every epoch (and once before the first update, epoch 0) the engine records
loss, poison-validation accuracy, clean-validation accuracy and the
adversarial success rate.

Speed choices (stated so they can be measured, as airbench does): the whole
dataset lives on the device as uint8 (a quarter of float32's bytes; CIFAR-10
poison-train is 112 MB), batches are gathered by index and converted on the
device, the adversarial test set is triggered once per phase on the device,
and on CUDA the model runs channels-last under bf16 autocast.

Resumable: after every epoch a checkpoint (model, optimizer, early-stopping
state, history) is written atomically to a run-keyed folder outside the
declared outputs; a restarted run continues from it. Every epoch's
randomness (data order, augmentation, regularizer draws, dropout) comes from
a generator seeded by (seed, phase, epoch), so a resumed run draws exactly
what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import evaluate as metrics
from . import seeding
from .io import atomic_path
from .names import PHASES, POISON_PHASE
from .registry import Registry

log = logging.getLogger(__name__)


METRIC_COLUMNS = metrics.SUMMARY_METRICS


# --------------------------------------------------------------------------- config


MIN_INPUT_SIZE = 8  # pixels: smaller leaves a CNN's downsampling nothing to work on


@dataclass
class TrainConfig:
    """Training hyper-parameters; defaults are the paper's (section 4.3)."""

    optimizer: str = "adam"
    lr: float = 1e-5
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    batch_size: int = 32
    eval_batch_size: int = 256
    max_epochs: int = 100
    patience: int = 5
    retrain_epochs: int = 5
    retrain_lr: float | None = None  # None: same as lr
    augment: str = "none"  # "none" | "flip" (random horizontal flip, as a tensor op)
    input_size: int | None = None  # resize batches on the device to this side; None = native
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    deterministic: bool = True  # deterministic kernels (CPU results are then exactly reproducible)
    data_on_device: bool = True  # keep uint8 datasets on the device

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> TrainConfig:
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; allowed: {sorted(known)}")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        OPTIMIZERS.get(self.optimizer)  # an unknown name: the registry's one message
        for name in ("lr", "batch_size", "eval_batch_size", "max_epochs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"training option {name}={getattr(self, name)!r} must be > 0")
        if self.retrain_lr is not None and not self.retrain_lr > 0:
            raise ValueError(f"training option retrain_lr={self.retrain_lr!r} must be > 0 or null (= lr)")
        for name in ("patience", "retrain_epochs", "weight_decay", "momentum"):
            if getattr(self, name) < 0:
                raise ValueError(f"training option {name}={getattr(self, name)!r} must be >= 0")
        if self.augment not in ("none", "flip"):
            raise ValueError(f"augment {self.augment!r} is unknown; allowed: ['flip', 'none']")
        # The one rule for input_size (the config schema gives only its type).
        if self.input_size is not None and self.input_size < MIN_INPUT_SIZE:
            raise ValueError(
                f"input_size {self.input_size!r} is too small; allowed: a whole number >= {MIN_INPUT_SIZE}, or null"
            )


# --------------------------------------------------------------------------- optimizers

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")


@OPTIMIZERS.register("adam")
def _adam(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("sgd")
def _sgd(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


# --------------------------------------------------------------------------- early stopping


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without a strict improvement of the score.

    ``update`` returns True when the epoch is the new best. ``should_stop`` is
    True exactly ``patience`` epochs after the best one.
    """

    patience: int
    best_score: float = -float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, epoch: int, score: float) -> bool:
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


# --------------------------------------------------------------------------- data on the device


@dataclass
class EvalSets:
    """The evaluation sets of one run, as uint8 NHWC tensors on the device."""

    poison_val: tuple[torch.Tensor, torch.Tensor]
    clean_val: tuple[torch.Tensor, torch.Tensor]
    adv_clean: torch.Tensor  # non-poison-class adversarial-test images, no trigger
    adv_triggered: torch.Tensor  # the same images with the trigger (8-bit, as stored)
    adv_source_mask: torch.Tensor  # bool; one-to-one source class only
    poison_class: int


def to_device_uint8(images: np.ndarray, device: torch.device, on_device: bool) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    return tensor.to(device) if on_device else tensor


def triggered_uint8(trigger, images: torch.Tensor, seed: int, batch: int = 512) -> torch.Tensor:
    """Apply ``trigger`` to uint8 NHWC images on their device, in batches, and re-quantize (the poisoned
    sets' own embedding, :func:`backdoor_eval.triggers.apply_uint8`)."""
    from .triggers import apply_uint8

    return apply_uint8(trigger, images, np.random.default_rng(seed), batch)


class BatchPreparer:
    """uint8 NHWC batch -> normalised float NCHW on the device (resize, flip, layout)."""

    def __init__(self, mean, std, device: torch.device, cfg: TrainConfig):
        self.device = device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.input_size = cfg.input_size
        self.channels_last = cfg.channels_last and device.type == "cuda"

    def __call__(self, images: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if flip is not None:
            x = torch.where(flip.to(self.device).view(-1, 1, 1, 1), x.flip(3), x)
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


# --------------------------------------------------------------------------- one phase


@dataclass
class PhaseResult:
    history: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor]  # the kept weights
    kept_epoch: int  # poison: the best epoch; clean: the last
    epochs_run: int
    stopped_early: bool
    resumed_from: int | None = None


class Engine:
    """Trains and evaluates one model on one run's data."""

    def __init__(
        self,
        model: torch.nn.Module,
        regularizer,
        cfg: TrainConfig,
        num_classes: int,
        device: torch.device,
        seed: int,
    ):
        self.model = model.to(device)
        if cfg.channels_last and device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.regularizer = regularizer
        self.cfg = cfg
        self.num_classes = num_classes
        self.device = device
        self.seed = seed
        default_cfg = getattr(model, "default_cfg", {}) or {}
        self.prepare = BatchPreparer(
            default_cfg.get("mean", (0.5, 0.5, 0.5)), default_cfg.get("std", (0.5, 0.5, 0.5)), device, cfg
        )
        self.autocast = cfg.amp and device.type == "cuda"

    # -- evaluation
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        preds = []
        for start in range(0, len(images), self.cfg.eval_batch_size):
            x = self.prepare(images[start : start + self.cfg.eval_batch_size])
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                preds.append(self.model(x).argmax(1))
        if not preds:
            return torch.empty(0, dtype=torch.long, device=self.device)
        return torch.cat(preds)

    def evaluate(self, sets: EvalSets) -> dict[str, float]:
        def predict(images: torch.Tensor) -> np.ndarray:
            return self.predict(images).cpu().numpy()

        adv_predictions = predict(sets.adv_triggered)
        source_mask = sets.adv_source_mask.cpu().numpy()
        return {
            "poison_val_accuracy": metrics.accuracy(predict(sets.poison_val[0]), sets.poison_val[1].cpu().numpy()),
            "clean_val_accuracy": metrics.accuracy(predict(sets.clean_val[0]), sets.clean_val[1].cpu().numpy()),
            "adversarial_success_rate": metrics.adversarial_success_rate(adv_predictions, sets.poison_class),
            "adversarial_success_rate_source": metrics.adversarial_success_rate(
                adv_predictions, sets.poison_class, source_mask
            )
            if source_mask.any()
            else float("nan"),
            "poison_class_rate_clean": metrics.adversarial_success_rate(predict(sets.adv_clean), sets.poison_class),
        }

    # -- training
    def train_epoch(self, optimizer, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> float:
        self.model.train()
        n = len(labels)
        order = torch.randperm(n, generator=generator)
        total, count = 0.0, 0
        for start in range(0, n, self.cfg.batch_size):
            idx = order[start : start + self.cfg.batch_size]
            if len(idx) < 2 and n >= 2:
                continue  # a batch of one breaks batch norm and every pairwise regularizer
            flip = torch.rand(len(idx), generator=generator) < 0.5 if self.cfg.augment == "flip" else None
            x = self.prepare(images[idx.to(images.device)], flip)
            y = labels[idx.to(labels.device)].to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                hidden, logits = self.model.forward_hidden(x)
            loss = self.regularizer.loss(
                hidden.float(), logits.float(), y, self.model.head, self.num_classes, generator
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
        return total / max(count, 1)

    def run_phase(
        self,
        phase: str,
        train_set: tuple[torch.Tensor, torch.Tensor],
        sets: EvalSets,
        checkpoint: Path | None,
        fingerprint: str,
        on_epoch: Callable[[int], None] | None = None,
    ) -> PhaseResult:
        """Run one phase; resume from ``checkpoint`` when it matches ``fingerprint``."""
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r} is unknown; allowed: {list(PHASES)}")
        cfg = self.cfg
        lr = cfg.lr if phase == POISON_PHASE or cfg.retrain_lr is None else cfg.retrain_lr
        optimizer = OPTIMIZERS.create(cfg.optimizer, params=self.model.parameters(), cfg=cfg, lr=lr)
        stopper = EarlyStopping(cfg.patience)
        history: list[dict[str, Any]] = []
        best_state = _clone_state(self.model)
        last_epoch = cfg.max_epochs if phase == POISON_PHASE else cfg.retrain_epochs
        start_epoch, resumed_from = 0, None

        state = _load_checkpoint(checkpoint, fingerprint)
        if state is not None:
            self.model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            best_state = state["best_state"]
            stopper = EarlyStopping(**state["stopper"])
            history = state["history"]
            start_epoch = resumed_from = state["epoch"] + 1
            log.info("resuming phase %s from checkpoint after epoch %d", phase, state["epoch"])

        images, labels = train_set
        stopped_early = bool(state and state.get("stopped_early"))
        for epoch in range(start_epoch, last_epoch + 1):
            if stopped_early:
                break
            tic = time.perf_counter()
            streams = (self.seed, PHASES.index(phase), epoch)
            torch.manual_seed(seeding.derived_seed(streams[0], "train/torch", *streams[1:]))  # dropout etc.
            generator = torch.Generator().manual_seed(seeding.derived_seed(streams[0], "train/data", *streams[1:]))
            train_loss = float("nan") if epoch == 0 else self.train_epoch(optimizer, images, labels, generator)
            if epoch > 0:
                # Before anything is recorded or saved: the last checkpoint stays the last good epoch.
                _check_finite(self.model, train_loss, phase, epoch, lr)
            scores = self.evaluate(sets)
            row = {"phase": phase, "epoch": epoch, "train_loss": train_loss, **scores}
            if phase == POISON_PHASE:
                improved = stopper.update(epoch, scores["poison_val_accuracy"])
                if improved:
                    best_state = _clone_state(self.model)
                stopped_early = stopper.should_stop and epoch < last_epoch
            row["seconds"] = time.perf_counter() - tic
            history.append(row)
            log.info(
                "%s epoch %d: loss %.4f poison-val %.4f clean-val %.4f ASR %.4f (%.1fs)",
                phase,
                epoch,
                train_loss,
                scores["poison_val_accuracy"],
                scores["clean_val_accuracy"],
                scores["adversarial_success_rate"],
                row["seconds"],
            )
            if checkpoint is not None:
                _save_checkpoint(
                    checkpoint,
                    {
                        "fingerprint": fingerprint,
                        "epoch": epoch,
                        "model": self.model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "best_state": best_state,
                        "stopper": dataclasses.asdict(stopper),
                        "history": history,
                        "stopped_early": stopped_early,
                    },
                )
            if on_epoch is not None:
                on_epoch(epoch)

        if phase == POISON_PHASE:
            kept = stopper.best_epoch
            self.model.load_state_dict(best_state)
        else:
            kept = history[-1]["epoch"]
            best_state = _clone_state(self.model)
        for row in history:
            row["is_best"] = row["epoch"] == kept
        return PhaseResult(
            history=history,
            best_state=best_state,
            kept_epoch=kept,
            epochs_run=history[-1]["epoch"],
            stopped_early=stopped_early,
            resumed_from=resumed_from,
        )


class DivergedError(ValueError):
    """Training produced a non-finite loss or weights: the run has no valid result."""


def _check_finite(model: torch.nn.Module, train_loss: float, phase: str, epoch: int, lr: float) -> None:
    """Raise :class:`DivergedError` when the epoch's loss or any weight is NaN or infinite."""
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if math.isfinite(train_loss) and not bad:
        return
    what = f"training loss {train_loss}" if not math.isfinite(train_loss) else f"non-finite weights ({bad[0]})"
    raise DivergedError(
        f"training diverged in the {phase} phase at epoch {epoch}: {what}. Nothing of this epoch was kept; "
        f"lower the learning rate (now {lr:g}: train.lr, or train.retrain_lr for the clean phase) and run again"
    )


def _clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path | None, fingerprint: str) -> dict[str, Any] | None:
    if path is None or not Path(path).exists():
        return None
    try:
        # Tensors and plain data only: a checkpoint never runs code (no arbitrary pickles).
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn file from a crash mid-write cannot happen (atomic), but be safe
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("checkpoint %s belongs to other settings; starting the phase afresh", path)
        return None
    return state


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"device {name!r} is unknown; allowed: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but no CUDA device is visible")
    return torch.device(name)


def set_determinism(cfg: TrainConfig, device: torch.device) -> None:
    if cfg.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        # The fast path: let cuDNN pick the fastest kernels for the fixed input shape.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
