"""Training-loss regularizers of the paper's section 2.3 (eqs. 1-6; docs/decisions.md#regularizers).

The classifier is ``f = g o h``: ``h`` maps an image to the final hidden
representation, ``g`` (the model's ``head``) maps it to logits ``f_L(x)``.
Each regularizer is one class in the registry ``REGULARIZERS`` with its
defaults (weight and hyper-parameters) next to it, and one method,

    loss(hidden, logits, targets, head, num_classes, generator, draws=None) -> scalar tensor

that returns the *total* training loss of the batch. A regularizer that needs
randomness also has ``draw(batch_size, generator) -> dict of tensors``: the
engine makes every batch's draws once per epoch, in the batches' order, and
hands each batch its own as ``draws`` (so no training step waits for a
host-to-device copy); without ``draws``, ``loss`` draws them itself.

- ``none``: mean cross-entropy.
- ``logit_squeeze``: CE + weight * mean_i ||f_L(x_i)||_2.
- ``mixup`` (manifold mixup, eqs. 1-3): (1 - weight) * CE + weight * L_mix;
  the default weight 1.0 replaces the cross-entropy outright (docs/decisions.md#regularizers).
- ``contrastive`` (eqs. 4-5): CE + weight * mean over pairs i < j.
- ``snnl`` (eq. 6): CE + weight * mean over samples of the SNNL term.

The terms themselves are pure functions (``logit_squeeze_term``,
``mixup_loss``, ``contrastive_term``, ``snnl_term``) so they can be tested and
reused on their own. Why the defaults are what they are is written in
``docs/regularizers.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from backdoor_eval.registry import Registry

__all__ = [
    "REGULARIZERS",
    "SNNL_NUMERATORS",
    "Regularizer",
    "NoRegularizer",
    "LogitSqueeze",
    "ManifoldMixup",
    "Contrastive",
    "SoftNearestNeighbor",
    "create_regularizer",
    "logit_squeeze_term",
    "draw_mixup",
    "mixup_loss",
    "contrastive_term",
    "snnl_term",
]

REGULARIZERS: Registry[type[Regularizer]] = Registry("regularizer")

SNNL_NUMERATORS = ("different", "same")

Head = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------
# The terms, as pure functions of tensors.
# --------------------------------------------------------------------------


def _distance_dtype(hidden: torch.Tensor) -> torch.Tensor:
    # Pairwise distances of hidden vectors with norms of tens overflow or lose
    # all precision in 16-bit floats; float32 and float64 are kept as given.
    if hidden.dtype in (torch.float16, torch.bfloat16):
        return hidden.float()
    return hidden


def logit_squeeze_term(logits: torch.Tensor) -> torch.Tensor:
    """Logit squeezing, L_LS = ||f_L(x)||_2 per sample (section 2.3), batch mean."""
    return torch.linalg.vector_norm(logits, ord=2, dim=1).mean()


def draw_mixup(
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw manifold mixup's randomness for one batch: ``(gamma, permutation)``.

    In this order from ``generator``: gamma ~ U(0, 1) (one 0-d float64 tensor
    for the whole batch), then a permutation of ``range(batch_size)`` (int64);
    the partner of sample i is ``x' = x[permutation[i]]``. Both live on the
    generator's device (``device``, default CPU, when ``generator`` is None,
    which uses torch's default generator there).
    """
    if generator is not None:
        device = generator.device
    device = torch.device("cpu" if device is None else device)
    # float64 so that gamma does not depend on the training precision.
    gamma = torch.rand((), generator=generator, dtype=torch.float64, device=device)
    permutation = torch.randperm(batch_size, generator=generator, device=device)
    return gamma, permutation


def mixup_loss(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: Head,
    num_classes: int,
    gamma: float | torch.Tensor,
    permutation: torch.Tensor,
) -> torch.Tensor:
    """Manifold mixup loss L_mix = H(g(h_mix), y_mix), eqs. 1-3.

    h_mix = (1 - gamma) h(x') + gamma h(x) (eq. 2) and
    y_mix = (1 - gamma) y' + gamma y (eq. 3) of one-hot labels, with
    ``x'_i = x_{permutation[i]}``; H is the cross-entropy against the soft
    targets y_mix (eq. 1), averaged over the batch.
    """
    gamma = torch.as_tensor(gamma, dtype=torch.float64, device=hidden.device).to(hidden.dtype)
    permutation = permutation.to(hidden.device)
    hidden_mixed = (1 - gamma) * hidden[permutation] + gamma * hidden  # eq. 2
    logits_mixed = head(hidden_mixed)
    one_hot = F.one_hot(targets, num_classes).to(logits_mixed.dtype)
    gamma_targets = gamma.to(logits_mixed.dtype)
    targets_mixed = (1 - gamma_targets) * one_hot[permutation] + gamma_targets * one_hot  # eq. 3
    return F.cross_entropy(logits_mixed, targets_mixed)  # eq. 1, soft targets


def contrastive_term(hidden: torch.Tensor, targets: torch.Tensor, num_classes: int, margin: float) -> torch.Tensor:
    """Contrastive regularizer, eqs. 4-5, averaged over unordered pairs i < j.

    Same class: (1/n) ||h_i - h_j||_2 (eq. 4); different classes:
    ((n-1)/n) max(0, c - ||h_i - h_j||_2) (eq. 5); n = ``num_classes``,
    c = ``margin``. A batch of one sample has no pairs and gives 0.
    """
    batch_size = hidden.shape[0]
    h = _distance_dtype(hidden)
    if batch_size < 2:
        return h.sum() * 0.0  # no pairs; keeps the graph connected
    first, second = torch.triu_indices(batch_size, batch_size, offset=1, device=h.device)
    # Norm of explicit differences rather than sqrt of a Gram-matrix
    # expansion: exact, and its gradient at distance 0 is 0, not NaN.
    distance = torch.linalg.vector_norm(h[first] - h[second], ord=2, dim=1)
    same_class = targets[first] == targets[second]
    same_term = distance / num_classes  # eq. 4
    different_term = (num_classes - 1) / num_classes * torch.clamp(margin - distance, min=0.0)  # eq. 5
    return torch.where(same_class, same_term, different_term).mean()


def snnl_term(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    numerator: str = "different",
) -> torch.Tensor:
    """Soft nearest neighbour loss, eq. 6, averaged over the batch.

    For each sample i, with d_ij = ||h_i - h_j||^2 / T,

        L_i = -log( sum_{j != i, y_j != y_i} exp(-d_ij) / sum_{k != i} exp(-d_ik) ).

    ``numerator="different"`` is eq. 6 as printed (other-class neighbours);
    ``"same"`` is Frosst et al.'s original (same-class neighbours, j != i).
    The denominator runs over k != i (the printed "k != j" read as "k != i",
    since j is bound by the numerator's sum). Both sums are computed as
    log-sum-exp. Samples whose numerator is empty (no neighbour of the
    required kind in the batch) are left out of the mean; if none remains
    the term is 0.
    """
    if numerator not in SNNL_NUMERATORS:
        raise ValueError(f"snnl numerator {numerator!r} is not one of {', '.join(SNNL_NUMERATORS)}")
    h = _distance_dtype(hidden)
    batch_size = h.shape[0]
    # Explicit differences: exact squared distances (a Gram-matrix expansion
    # cancels catastrophically for close vectors with norms of tens).
    squared_distance = (h[:, None, :] - h[None, :, :]).pow(2).sum(dim=-1)
    log_kernel = -squared_distance / temperature
    not_self = ~torch.eye(batch_size, dtype=torch.bool, device=h.device)
    same_class = targets[:, None] == targets[None, :]
    numerator_mask = not_self & (~same_class if numerator == "different" else same_class)
    valid = numerator_mask.any(dim=1)
    # Rows without a numerator get a harmless all-zero row instead of all
    # -inf: log-sum-exp of all -inf has a NaN gradient even when the row is
    # masked out afterwards. Done without a host sync.
    keep = valid[:, None]
    log_numerator = torch.logsumexp(log_kernel.masked_fill(~numerator_mask, -math.inf).masked_fill(~keep, 0.0), dim=1)
    log_denominator = torch.logsumexp(log_kernel.masked_fill(~not_self, -math.inf).masked_fill(~keep, 0.0), dim=1)
    per_sample = torch.where(valid, log_denominator - log_numerator, torch.zeros_like(log_numerator))
    return per_sample.sum() / valid.sum().clamp(min=1)


# --------------------------------------------------------------------------
# The registry: one small class per regularizer, defaults next to it.
# --------------------------------------------------------------------------


def _check_number(
    owner: str, key: str, value: Any, *, minimum: float, strict: bool = False, maximum: float | None = None
) -> float:
    """``value`` as a float, or ValueError naming it and the allowed range."""
    upper = "" if maximum is None else f" and <= {maximum:g}"
    allowed = f"a finite number {'>' if strict else '>='} {minimum:g}{upper}"
    if maximum is not None and maximum == minimum:
        allowed = f"{minimum:g} (or left out)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner} {key}={value!r} is not allowed: must be {allowed}")
    number = float(value)
    too_small = number <= minimum if strict else number < minimum
    if not math.isfinite(number) or too_small or (maximum is not None and number > maximum):
        raise ValueError(f"{owner} {key}={value!r} is not allowed: must be {allowed}")
    return number


class Regularizer:
    """Base class. Subclasses set ``name``, ``default_weight``, ``defaults``
    (hyper-parameter -> default) and implement ``term`` (the added term) or
    override ``loss``."""

    name: ClassVar[str] = ""
    default_weight: ClassVar[float] = 0.0
    max_weight: ClassVar[float | None] = None
    defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def parameter_names(cls) -> list[str]:
        """What ``REGULARIZERS.create`` accepts: the weight and the hyper-parameters of ``defaults``."""
        return ["weight", *cls.defaults]

    def __init__(self, weight: float | None = None, **hyperparams: Any):
        owner = f"regularizer {self.name!r}"
        unknown = [key for key in hyperparams if key not in self.defaults]
        if unknown:
            allowed = ", ".join(self.parameter_names())
            raise ValueError(f"{owner} has no parameter {unknown[0]!r}; allowed: {allowed}")
        self.weight = _check_number(
            owner,
            "weight",
            self.default_weight if weight is None else weight,
            minimum=0.0,
            maximum=self.max_weight,
        )
        self.hyperparams = {**self.defaults, **hyperparams}
        self._validate(owner)

    def _validate(self, owner: str) -> None:
        """Check and normalise ``self.hyperparams``; raise ValueError."""

    @property
    def config(self) -> dict[str, Any]:
        """JSON-ready description: ``{"name", "weight", **hyperparams}``."""
        return {"name": self.name, "weight": self.weight, **self.hyperparams}

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self.config.items() if key != "name")
        return f"{type(self).__name__}({params})"

    def term(
        self,
        hidden: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        head: Head,
        num_classes: int,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def draw(self, batch_size: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The batch's random draws, for ``loss(..., draws=)``; none by default."""
        return {}

    def loss(
        self,
        hidden: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        head: Head,
        num_classes: int,
        generator: torch.Generator | None = None,
        draws: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Total loss of the batch: mean cross-entropy + weight * term.

        ``hidden`` (B, D) is h(x), ``logits`` (B, n) is f_L(x) = head(hidden),
        ``targets`` (B,) int64 class indices, ``head`` the module g,
        ``generator`` the source of any randomness (mixup) when ``draws``
        (made beforehand by :meth:`draw`) is not given.
        """
        _check_batch(hidden, logits, targets, num_classes)
        cross_entropy = F.cross_entropy(logits, targets)
        if self.weight == 0.0:
            return cross_entropy
        return cross_entropy + self.weight * self.term(hidden, logits, targets, head, num_classes, generator)


def _check_batch(hidden: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> None:
    if hidden.ndim != 2 or logits.ndim != 2 or targets.ndim != 1:
        raise ValueError(
            f"expected hidden (B, D), logits (B, n), targets (B,); got shapes "
            f"{tuple(hidden.shape)}, {tuple(logits.shape)}, {tuple(targets.shape)}"
        )
    if not (hidden.shape[0] == logits.shape[0] == targets.shape[0]):
        raise ValueError(
            f"batch sizes differ: hidden {hidden.shape[0]}, logits {logits.shape[0]}, targets {targets.shape[0]}"
        )
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} columns but num_classes={num_classes}")


@REGULARIZERS.register("none")
class NoRegularizer(Regularizer):
    """Plain mean cross-entropy (no term; its weight can only be 0)."""

    name = "none"
    default_weight = 0.0
    max_weight = 0.0


@REGULARIZERS.register("logit_squeeze")
class LogitSqueeze(Regularizer):
    """CE + weight * mean_i ||f_L(x_i)||_2 (logit squeezing, section 2.3)."""

    name = "logit_squeeze"
    default_weight = 0.05

    def term(self, hidden, logits, targets, head, num_classes, generator):
        return logit_squeeze_term(logits)


@REGULARIZERS.register("mixup")
class ManifoldMixup(Regularizer):
    """Manifold mixup on h(x), eqs. 1-3: (1 - weight) * CE + weight * L_mix.

    The default weight 1.0 replaces the plain cross-entropy for the batch
    (docs/decisions.md#regularizers); smaller weights blend it back in. gamma and the permutation are
    drawn from ``generator`` (see ``draw_mixup``), once per batch.
    """

    name = "mixup"
    default_weight = 1.0
    max_weight = 1.0

    def draw(self, batch_size, generator):
        gamma, permutation = draw_mixup(batch_size, generator)
        return {"gamma": gamma, "permutation": permutation}

    def loss(self, hidden, logits, targets, head, num_classes, generator=None, draws=None):
        _check_batch(hidden, logits, targets, num_classes)
        # Drawn whatever the weight, so the generator's stream (and every later
        # draw from it) does not depend on the weight.
        if draws is None:
            gamma, permutation = draw_mixup(hidden.shape[0], generator, device=hidden.device)
        else:
            gamma, permutation = draws["gamma"], draws["permutation"]
        if self.weight == 0.0:
            return F.cross_entropy(logits, targets)
        mixed = mixup_loss(hidden, targets, head, num_classes, gamma, permutation)
        if self.weight == 1.0:
            return mixed
        return (1.0 - self.weight) * F.cross_entropy(logits, targets) + self.weight * mixed


@REGULARIZERS.register("contrastive")
class Contrastive(Regularizer):
    """CE + weight * mean over pairs of eqs. 4-5 on h(x), margin c = ``margin``."""

    name = "contrastive"
    default_weight = 0.1
    defaults = {"margin": 10.0}

    def _validate(self, owner):
        self.hyperparams["margin"] = _check_number(owner, "margin", self.hyperparams["margin"], minimum=0.0)

    @property
    def margin(self) -> float:
        return self.hyperparams["margin"]

    def term(self, hidden, logits, targets, head, num_classes, generator):
        return contrastive_term(hidden, targets, num_classes, self.margin)


@REGULARIZERS.register("snnl")
class SoftNearestNeighbor(Regularizer):
    """CE + weight * soft nearest neighbour loss (eq. 6) on h(x), temperature T.

    ``numerator``: ``"different"`` (eq. 6 as printed, default) or ``"same"``
    (Frosst et al.'s original); see ``snnl_term``.
    """

    name = "snnl"
    default_weight = 0.1
    defaults = {"temperature": 100.0, "numerator": "different"}

    def _validate(self, owner):
        self.hyperparams["temperature"] = _check_number(
            owner, "temperature", self.hyperparams["temperature"], minimum=0.0, strict=True
        )
        if self.hyperparams["numerator"] not in SNNL_NUMERATORS:
            raise ValueError(
                f"{owner} numerator={self.hyperparams['numerator']!r} is not allowed: "
                f"must be one of {', '.join(SNNL_NUMERATORS)}"
            )

    @property
    def temperature(self) -> float:
        return self.hyperparams["temperature"]

    @property
    def numerator(self) -> str:
        return self.hyperparams["numerator"]

    def term(self, hidden, logits, targets, head, num_classes, generator):
        return snnl_term(hidden, targets, self.temperature, self.numerator)


def create_regularizer(name: str, weight: float | None = None, **hyperparams: Any) -> Regularizer:
    """Build the regularizer ``name`` (one of ``REGULARIZERS.names()``).

    ``weight=None`` and missing hyper-parameters take the class defaults;
    unknown names, unknown options and out-of-range values raise ValueError.
    """
    return REGULARIZERS.create(name, weight=weight, **hyperparams)
