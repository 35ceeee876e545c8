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
on CUDA the model runs channels-last under bf16 autocast, and no training step
waits for the device: the epoch's batch order and random draws are staged on
the device once per epoch and the loss is read once per epoch. Optional:
``compile`` (torch.compile) and ``fused_optimizer``.

Resumable: a checkpoint (model, optimizer, early-stopping state, history) is
written atomically, at most every ``checkpoint_every_s`` seconds and after the
phase's last epoch, to a run-keyed folder outside the declared outputs; a
restarted run continues from it. Every epoch's randomness (data order,
augmentation, regularizer draws, dropout) comes from a generator seeded by
(seed, phase, epoch), so a resumed run draws exactly what an uninterrupted one
would.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    compile: bool = False  # torch.compile the model's forward (docs/engine.md#compiled-and-fused-training)
    fused_optimizer: bool = False  # the optimizer's fused kernel (one kernel per step for all parameters)
    checkpoint_every_s: float = 300.0  # write the resumable checkpoint at most this often (0: every epoch)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> TrainConfig:
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; allowed: {sorted(known)}")
        for option in dataclasses.fields(cls):
            if option.name in values:
                _check_option_type(option.name, values[option.name], str(option.type))
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
        if not self.checkpoint_every_s >= 0:
            raise ValueError(f"training option checkpoint_every_s={self.checkpoint_every_s!r} must be >= 0")


# Settings that change how a phase runs but not what it computes: a checkpoint written under
# other values of them is resumed (they are left out of the phase's fingerprint).
RESUMABLE_ACROSS = ("checkpoint_every_s",)


def result_settings(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as a dict without :data:`RESUMABLE_ACROSS`: what a checkpoint's fingerprint keys on."""
    return {key: value for key, value in dataclasses.asdict(cfg).items() if key not in RESUMABLE_ACROSS}


def _check_option_type(name: str, value: Any, annotation: str) -> None:
    """A ``ValueError`` naming the option when ``value`` is not of its field's type (``"float | None"``, ...):
    a JSON ``"abc"`` for ``lr`` or ``1.5`` for ``batch_size`` from the command line."""
    kind, _, rest = annotation.partition("|")
    optional = "None" in rest
    if value is None and optional:
        return
    accepted = {
        "str": (isinstance(value, str), "text"),
        "bool": (isinstance(value, bool), "true or false"),
        "int": (isinstance(value, int) and not isinstance(value, bool), "a whole number"),
        "float": (isinstance(value, (int, float)) and not isinstance(value, bool), "a number"),
    }
    ok, allowed = accepted[kind.strip()]
    if not ok:
        raise ValueError(
            f"training option {name}={value!r} is not valid; allowed: {allowed}{' or null' if optional else ''}"
        )


# --------------------------------------------------------------------------- optimizers

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")


def _kernel(cfg: TrainConfig) -> dict[str, bool]:
    """The optimizer implementation: fused (one kernel for every parameter) or torch's default
    (foreach on CUDA, a loop on the CPU)."""
    return {"fused": True} if cfg.fused_optimizer else {}


@OPTIMIZERS.register("adam")
def _adam(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay, **_kernel(cfg))


@OPTIMIZERS.register("adamw")
def _adamw(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, **_kernel(cfg))


@OPTIMIZERS.register("sgd")
def _sgd(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **_kernel(cfg))


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
            x = torch.where(flip.to(self.device, non_blocking=True).view(-1, 1, 1, 1), x.flip(3), x)
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def stage(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Move CPU tensors of one dtype to ``device`` in one copy; views of it, one per tensor.

    On CUDA the copy comes from pinned memory and is ``non_blocking``: the host queues it
    and goes on, so the epoch's randomness reaches the GPU without a wait.
    """
    if not tensors:
        return []
    flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
    if device.type == "cuda":
        flat = flat.pin_memory().to(device, non_blocking=True)
    else:
        flat = flat.to(device)
    pieces = flat.split([tensor.numel() for tensor in tensors])
    return [piece.view(tensor.shape) for piece, tensor in zip(pieces, tensors)]


@dataclass
class EpochPlan:
    """One epoch's batches and every random draw they use, made before the first step.

    Drawn from the epoch's generator in the order the per-step loop used to draw them
    (the data order, then for each batch its flips and its regularizer draws), so the
    values are the same; then staged on the device at once (:func:`stage`), so a step
    never waits for a host-to-device copy.
    """

    batches: list[torch.Tensor]  # indices of each batch, on the data's device
    flips: list[torch.Tensor | None]  # per batch, bool on the device (augment: flip)
    draws: list[dict[str, torch.Tensor]]  # per batch, the regularizer's draws on the device

    @classmethod
    def draw(
        cls,
        n: int,
        batch_size: int,
        generator: torch.Generator,
        flip: bool,
        regularizer,
        data_device: torch.device,
        device: torch.device,
    ) -> EpochPlan:
        order = torch.randperm(n, generator=generator)
        batches, flips, draws = [], [], []
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2 and n >= 2:
                continue  # a batch of one breaks batch norm and every pairwise regularizer
            batches.append(idx)
            flips.append(torch.rand(len(idx), generator=generator) < 0.5 if flip else None)
            draws.append(regularizer.draw(len(idx), generator))
        staged_flips = iter(stage([f for f in flips if f is not None], device))
        keys = sorted({key for batch in draws for key in batch})
        staged = {key: iter(stage([batch[key] for batch in draws], device)) for key in keys}
        return cls(
            batches=stage(batches, data_device),
            flips=[None if f is None else next(staged_flips) for f in flips],
            draws=[{key: next(staged[key]) for key in batch} for batch in draws],
        )


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
        # h and logits in one call; compiled, the first steps of each batch shape and of
        # train/eval mode pay the compilation (docs/engine.md#compiled-and-fused-training).
        self.forward_hidden = torch.compile(self.model.forward_hidden) if cfg.compile else self.model.forward_hidden

    # -- evaluation
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        preds = []
        for start in range(0, len(images), self.cfg.eval_batch_size):
            x = self.prepare(images[start : start + self.cfg.eval_batch_size])
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                preds.append(self.forward_hidden(x)[1].argmax(1))
        if not preds:
            return torch.empty(0, dtype=torch.long, device=self.device)
        return torch.cat(preds)

    def evaluate(self, sets: EvalSets) -> dict[str, float]:
        # Every set's predictions stay on the device until one copy at the end: one wait per epoch.
        groups = (sets.adv_triggered, sets.poison_val[0], sets.clean_val[0], sets.adv_clean)
        on_device = [self.predict(images) for images in groups]
        every = torch.cat(on_device).cpu().numpy() if on_device else np.empty(0, np.int64)
        adv_predictions, poison_val, clean_val, adv_clean = np.split(every, np.cumsum([len(p) for p in on_device])[:-1])
        source_mask = sets.adv_source_mask.cpu().numpy()
        return {
            "poison_val_accuracy": metrics.accuracy(poison_val, sets.poison_val[1].cpu().numpy()),
            "clean_val_accuracy": metrics.accuracy(clean_val, sets.clean_val[1].cpu().numpy()),
            "adversarial_success_rate": metrics.adversarial_success_rate(adv_predictions, sets.poison_class),
            "adversarial_success_rate_source": metrics.adversarial_success_rate(
                adv_predictions, sets.poison_class, source_mask
            )
            if source_mask.any()
            else float("nan"),
            "poison_class_rate_clean": metrics.adversarial_success_rate(adv_clean, sets.poison_class),
        }

    # -- training
    def train_epoch(self, optimizer, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> float:
        """One pass over ``(images, labels)``; the mean training loss.

        No step waits for the device (airbench's rule): the batch order and every random draw
        are made and staged once per epoch (:class:`EpochPlan`), and the loss is summed on the
        device and read once, at the end. On the CPU the draws, their order and the float64 sum
        are those of a per-step loop, so the results are bit for bit the same.
        """
        self.model.train()
        n = len(labels)
        plan = EpochPlan.draw(
            n,
            self.cfg.batch_size,
            generator,
            self.cfg.augment == "flip",
            self.regularizer,
            images.device,
            self.device,
        )
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        for idx, flip, draws in zip(plan.batches, plan.flips, plan.draws):
            x = self.prepare(images[idx], flip)
            y = labels[idx.to(labels.device)].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                hidden, logits = self.forward_hidden(x)
            loss = self.regularizer.loss(
                hidden.float(), logits.float(), y, self.model.head, self.num_classes, generator, draws=draws
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * len(idx)
            count += len(idx)
        return total.item() / max(count, 1)

    def run_phase(
        self,
        phase: str,
        train_set: tuple[torch.Tensor, torch.Tensor],
        sets: EvalSets,
        checkpoint: Path | None,
        fingerprint: str,
        on_epoch: Callable[[int], None] | None = None,
    ) -> PhaseResult:
        """Run one phase; resume from ``checkpoint`` when it matches ``fingerprint``.

        Four steps: :meth:`_resume` (a fresh phase, or the checkpoint's), :meth:`_epoch` for each epoch
        left, :meth:`_checkpoint` after each (by elapsed time, and after the last), :meth:`_finish` (the
        kept weights and the result).
        """
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r} is unknown; allowed: {list(PHASES)}")
        run = self._resume(phase, checkpoint, fingerprint)
        images, labels = train_set
        for epoch in range(run.start_epoch, run.last_epoch + 1):
            if run.stopped_early:
                break
            self._epoch(run, epoch, images, labels, sets)
            if checkpoint is not None:
                self._checkpoint(run, epoch, checkpoint, fingerprint)
            if on_epoch is not None:
                on_epoch(epoch)
        return self._finish(run)

    def _resume(self, phase: str, checkpoint: Path | None, fingerprint: str) -> _PhaseRun:
        """The phase's state before its first epoch left: fresh, or the checkpoint's when it was written
        under ``fingerprint`` and fits (model, optimizer, kept weights, early stopping, history)."""
        cfg = self.cfg
        lr = cfg.lr if phase == POISON_PHASE or cfg.retrain_lr is None else cfg.retrain_lr
        run = _PhaseRun(
            phase=phase,
            lr=lr,
            optimizer=OPTIMIZERS.create(cfg.optimizer, params=self.model.parameters(), cfg=cfg, lr=lr),
            stopper=EarlyStopping(cfg.patience),
            best_state=_clone_state(self.model),
            last_epoch=cfg.max_epochs if phase == POISON_PHASE else cfg.retrain_epochs,
        )
        state = _load_checkpoint(checkpoint, fingerprint, self.model.state_dict())
        if state is not None:
            try:  # the optimizer checks its state before it changes anything
                run.optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                log.warning(
                    "ignoring unusable checkpoint %s (optimizer state: %s); starting the phase afresh", checkpoint, exc
                )
                state = None
        if state is not None:
            self.model.load_state_dict(state["model"])
            run.best_state = state["best_state"]
            run.stopper = EarlyStopping(**state["stopper"])
            run.history = state["history"]
            run.start_epoch = run.resumed_from = state["epoch"] + 1
            run.stopped_early = bool(state.get("stopped_early"))
            log.info("resuming phase %s from checkpoint after epoch %d", phase, state["epoch"])
        run.saved_at = time.monotonic()
        return run

    def _epoch(self, run: _PhaseRun, epoch: int, images: torch.Tensor, labels: torch.Tensor, sets: EvalSets) -> None:
        """One epoch (epoch 0: the model before any update, evaluated only), recorded in ``run``."""
        phase = run.phase
        tic = time.perf_counter()
        streams = (self.seed, PHASES.index(phase), epoch)
        torch.manual_seed(seeding.derived_seed(streams[0], "train/torch", *streams[1:]))  # dropout etc.
        generator = torch.Generator().manual_seed(seeding.derived_seed(streams[0], "train/data", *streams[1:]))
        train_loss = float("nan") if epoch == 0 else self.train_epoch(run.optimizer, images, labels, generator)
        if epoch > 0:
            # Before anything is recorded or saved: the last checkpoint stays the last good epoch.
            _check_finite(self.model, train_loss, phase, epoch, run.lr)
        scores = self.evaluate(sets)
        row = {"phase": phase, "epoch": epoch, "train_loss": train_loss, **scores}
        if phase == POISON_PHASE:
            improved = run.stopper.update(epoch, scores["poison_val_accuracy"])
            if improved:
                run.best_state = _clone_state(self.model)
            run.stopped_early = run.stopper.should_stop and epoch < run.last_epoch
        row["seconds"] = time.perf_counter() - tic
        run.history.append(row)
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

    def _checkpoint(self, run: _PhaseRun, epoch: int, checkpoint: Path, fingerprint: str) -> None:
        """Save the phase's state after ``epoch`` when ``checkpoint_every_s`` has passed since the last save,
        and after the phase's last epoch: a killed job loses at most that much training, without a
        checkpoint's writes every epoch."""
        last = run.stopped_early or epoch == run.last_epoch
        if not last and time.monotonic() - run.saved_at < self.cfg.checkpoint_every_s:
            return
        run.saved_at = time.monotonic()
        _save_checkpoint(
            checkpoint,
            {
                "fingerprint": fingerprint,
                "epoch": epoch,
                "model": self.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "best_state": run.best_state,
                "stopper": dataclasses.asdict(run.stopper),
                "history": run.history,
                "stopped_early": run.stopped_early,
            },
        )

    def _finish(self, run: _PhaseRun) -> PhaseResult:
        """The kept weights (poison: the best epoch's, loaded into the model; clean: the last epoch's) and
        the phase's result, each history row marked ``is_best`` for the kept epoch."""
        if run.phase == POISON_PHASE:
            kept = run.stopper.best_epoch
            self.model.load_state_dict(run.best_state)
            best_state = run.best_state
        else:
            kept = run.history[-1]["epoch"]
            best_state = _clone_state(self.model)
        for row in run.history:
            row["is_best"] = row["epoch"] == kept
        return PhaseResult(
            history=run.history,
            best_state=best_state,
            kept_epoch=kept,
            epochs_run=run.history[-1]["epoch"],
            stopped_early=run.stopped_early,
            resumed_from=run.resumed_from,
        )


@dataclass
class _PhaseRun:
    """A phase under way: what :meth:`Engine.run_phase`'s steps share, and what a checkpoint saves."""

    phase: str
    lr: float
    optimizer: torch.optim.Optimizer
    stopper: EarlyStopping
    best_state: dict[str, torch.Tensor]
    last_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    resumed_from: int | None = None
    stopped_early: bool = False
    saved_at: float = 0.0  # time.monotonic() of the last save (or of the start)


class DivergedError(ValueError):
    """Training produced a non-finite loss or weights: the run has no valid result."""


def _check_finite(model: torch.nn.Module, train_loss: float, phase: str, epoch: int, lr: float) -> None:
    """Raise :class:`DivergedError` when the epoch's loss or any weight is NaN or infinite."""
    floats = {name: tensor for name, tensor in model.state_dict().items() if tensor.is_floating_point()}
    finite = [torch.isfinite(tensor).all() for tensor in floats.values()]
    # One device-to-host read for every tensor, not one per tensor.
    if math.isfinite(train_loss) and (not finite or bool(torch.stack(finite).all())):
        return
    bad = [name for name, ok in zip(floats, finite) if not ok]
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


# What a checkpoint holds (see ``Engine.run_phase``), and the type of each.
_CHECKPOINT_FIELDS = {
    "fingerprint": str,
    "epoch": int,
    "model": dict,
    "optimizer": dict,
    "best_state": dict,
    "stopper": dict,
    "history": list,
}


def _load_checkpoint(
    path: Path | None, fingerprint: str, model_state: dict[str, torch.Tensor] | None = None
) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it was written under ``fingerprint`` and fits the model whose state
    is ``model_state``; else ``None`` and a warning naming the file: the phase starts afresh (an unusable
    checkpoint never blocks a run)."""
    if path is None or not Path(path).exists():
        return None
    try:
        # Tensors and plain data only: a checkpoint never runs code (no arbitrary pickles).
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn file from a crash mid-write cannot happen (atomic), but be safe
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None
    if not isinstance(state, dict):
        log.warning(
            "ignoring unusable checkpoint %s: it holds a %s, not a training checkpoint; starting the phase afresh",
            path,
            type(state).__name__,
        )
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("checkpoint %s belongs to other settings; starting the phase afresh", path)
        return None
    wrong = [key for key, kind in _CHECKPOINT_FIELDS.items() if not isinstance(state.get(key), kind)]
    if not wrong and model_state is not None:
        shapes = {key: tuple(value.shape) for key, value in model_state.items()}
        wrong = [
            key
            for key in ("model", "best_state")
            if {k: tuple(getattr(v, "shape", ())) for k, v in state[key].items()} != shapes
        ]
    if wrong:
        log.warning(
            "ignoring unusable checkpoint %s: its %s is missing or does not fit; starting the phase afresh",
            path,
            ", ".join(wrong),
        )
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


def setup_job(
    train_params: dict[str, Any] | None, device: str, threads: int | None
) -> tuple[TrainConfig, torch.device]:
    """What every training job does first: its CPU threads, its checked settings, its device and the
    determinism they ask for. Returns ``(settings, device)``."""
    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig.from_dict(train_params)
    picked = pick_device(device)
    set_determinism(cfg, picked)
    return cfg, picked


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
