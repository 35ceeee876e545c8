"""Tests for backdoor_eval.regularizers: each loss against a loop-based reading
of the paper's equations (section 2.3, eqs. 1-6) on a tiny float64 batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from backdoor_eval.regularizers import (
    REGULARIZERS,
    contrastive_term,
    create_regularizer,
    draw_mixup,
    logit_squeeze_term,
    mixup_loss,
    snnl_term,
)

NUM_CLASSES = 3
TARGETS = [0, 1, 0, 2, 1]  # class 2 is a singleton: empty same-class numerator


@pytest.fixture
def batch():
    """5 samples, hidden dim 4, 3 classes, a linear head; float64."""
    seeded = torch.Generator().manual_seed(1234)
    hidden = torch.randn(5, 4, generator=seeded, dtype=torch.float64)
    head = torch.nn.Linear(4, NUM_CLASSES).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(NUM_CLASSES, 4, generator=seeded, dtype=torch.float64))
        head.bias.copy_(torch.randn(NUM_CLASSES, generator=seeded, dtype=torch.float64))
    targets = torch.tensor(TARGETS)
    return hidden, head(hidden), targets, head


# ---- loop-based references on Python floats --------------------------------


def rows(tensor):
    return [[float(v) for v in row] for row in tensor.detach()]


def apply_head(head, vector):
    weight, bias = rows(head.weight), [float(v) for v in head.bias.detach()]
    return [sum(w * x for w, x in zip(weight[c], vector)) + bias[c] for c in range(len(bias))]


def cross_entropy_ref(logit_rows, target_distributions):
    """Mean over samples of -sum_c y_c log softmax(z)_c."""
    total = 0.0
    for z, y in zip(logit_rows, target_distributions):
        log_norm = math.log(sum(math.exp(v) for v in z))
        total += -sum(y_c * (z_c - log_norm) for z_c, y_c in zip(z, y))
    return total / len(logit_rows)


def one_hot(label):
    return [1.0 if c == label else 0.0 for c in range(NUM_CLASSES)]


def distance(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def contrastive_ref(hidden_rows, labels, n, margin):
    terms = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            d = distance(hidden_rows[i], hidden_rows[j])
            if labels[i] == labels[j]:
                terms.append(d / n)  # eq. 4
            else:
                terms.append((n - 1) / n * max(0.0, margin - d))  # eq. 5
    return sum(terms) / len(terms)


def snnl_ref(hidden_rows, labels, temperature, numerator):
    losses = []
    b = len(labels)
    for i in range(b):

        def kernel(j, i=i):
            return math.exp(-(distance(hidden_rows[i], hidden_rows[j]) ** 2) / temperature)

        if numerator == "different":
            partners = [j for j in range(b) if j != i and labels[j] != labels[i]]
        else:
            partners = [j for j in range(b) if j != i and labels[j] == labels[i]]
        if not partners:
            continue  # empty numerator: left out of the mean
        top = sum(kernel(j) for j in partners)
        bottom = sum(kernel(k) for k in range(b) if k != i)
        losses.append(-math.log(top / bottom))
    return sum(losses) / len(losses)


def mixup_ref(hidden_rows, labels, head, gamma, permutation):
    logit_rows, distributions = [], []
    for i, partner in enumerate(permutation):
        h_mix = [(1 - gamma) * hp + gamma * hi for hp, hi in zip(hidden_rows[partner], hidden_rows[i])]  # eq. 2
        y_mix = [(1 - gamma) * yp + gamma * yi for yp, yi in zip(one_hot(labels[partner]), one_hot(labels[i]))]  # eq. 3
        logit_rows.append(apply_head(head, h_mix))
        distributions.append(y_mix)
    return cross_entropy_ref(logit_rows, distributions)  # eq. 1


def plain_ce(logits, targets):
    return cross_entropy_ref(rows(logits), [one_hot(int(t)) for t in targets])


# ---- registry and construction --------------------------------------------


def test_registry_holds_the_five_regularizers():
    assert REGULARIZERS.names() == ["contrastive", "logit_squeeze", "mixup", "none", "snnl"]


def test_defaults_are_next_to_each_class():
    assert create_regularizer("none").config == {"name": "none", "weight": 0.0}
    assert create_regularizer("logit_squeeze").config == {"name": "logit_squeeze", "weight": 0.05}
    assert create_regularizer("mixup").config == {"name": "mixup", "weight": 1.0}
    assert create_regularizer("contrastive").config == {"name": "contrastive", "weight": 0.1, "margin": 10.0}
    assert create_regularizer("snnl").config == {
        "name": "snnl",
        "weight": 0.1,
        "temperature": 100.0,
        "numerator": "different",
    }
    custom = create_regularizer("snnl", weight=0.5, temperature=7, numerator="same")
    assert (custom.weight, custom.temperature, custom.numerator) == (0.5, 7.0, "same")


@pytest.mark.parametrize(
    ("name", "params", "named"),
    [
        ("dropout", {}, "'dropout'"),
        ("logit_squeeze", {"weight": -0.1}, "weight=-0.1"),
        ("logit_squeeze", {"weight": float("nan")}, "weight=nan"),
        ("logit_squeeze", {"weight": "0.1"}, "weight='0.1'"),
        ("none", {"weight": 0.5}, "weight=0.5"),
        ("mixup", {"weight": 1.5}, "weight=1.5"),
        ("contrastive", {"margin": -1}, "margin=-1"),
        ("contrastive", {"temperature": 1.0}, "'temperature'"),
        ("snnl", {"temperature": 0}, "temperature=0"),
        ("snnl", {"temperature": -2.0}, "temperature=-2.0"),
        ("snnl", {"numerator": "other"}, "numerator='other'"),
        ("snnl", {"margin": 1.0}, "'margin'"),
    ],
)
def test_invalid_configuration_is_a_value_error_naming_the_value(name, params, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(".", r"\.")):
        create_regularizer(name, **params)


def test_mismatched_batch_is_a_value_error(batch):
    hidden, logits, targets, head = batch
    with pytest.raises(ValueError, match="num_classes=4"):
        create_regularizer("none").loss(hidden, logits, targets, head, 4)
    with pytest.raises(ValueError, match="batch sizes differ"):
        create_regularizer("none").loss(hidden, logits, targets[:4], head, NUM_CLASSES)


# ---- each loss against its equation ----------------------------------------


def test_none_is_plain_cross_entropy(batch):
    hidden, logits, targets, head = batch
    loss = create_regularizer("none").loss(hidden, logits, targets, head, NUM_CLASSES)
    assert torch.equal(loss, F.cross_entropy(logits, targets))
    assert loss.item() == pytest.approx(plain_ce(logits, targets), rel=1e-12)


def test_logit_squeeze_matches_mean_logit_norm(batch):
    hidden, logits, targets, head = batch
    mean_norm = sum(math.sqrt(sum(v * v for v in z)) for z in rows(logits)) / len(TARGETS)
    assert logit_squeeze_term(logits).item() == pytest.approx(mean_norm, rel=1e-12)
    loss = create_regularizer("logit_squeeze", weight=0.3).loss(hidden, logits, targets, head, NUM_CLASSES)
    assert loss.item() == pytest.approx(plain_ce(logits, targets) + 0.3 * mean_norm, rel=1e-12)


@pytest.mark.parametrize("margin", [0.0, 2.0, 50.0])
def test_contrastive_matches_eqs_4_and_5_over_pairs(batch, margin):
    hidden, logits, targets, head = batch
    hidden_rows = rows(hidden)
    expected = contrastive_ref(hidden_rows, TARGETS, NUM_CLASSES, margin)
    assert contrastive_term(hidden, targets, NUM_CLASSES, margin).item() == pytest.approx(expected, rel=1e-12)
    loss = create_regularizer("contrastive", weight=0.2, margin=margin).loss(hidden, logits, targets, head, NUM_CLASSES)
    assert loss.item() == pytest.approx(plain_ce(logits, targets) + 0.2 * expected, rel=1e-12)
    if margin == 2.0:  # the test exercises both sides of the hinge
        different = [
            distance(hidden_rows[i], hidden_rows[j])
            for i in range(5)
            for j in range(i + 1, 5)
            if TARGETS[i] != TARGETS[j]
        ]
        assert min(different) < margin < max(different)


def test_contrastive_of_a_single_sample_is_zero(batch):
    hidden, _, targets, _ = batch
    assert contrastive_term(hidden[:1], targets[:1], NUM_CLASSES, 1.0).item() == 0.0


@pytest.mark.parametrize("numerator", ["different", "same"])
@pytest.mark.parametrize("temperature", [0.5, 4.0])
def test_snnl_matches_eq_6(batch, numerator, temperature):
    hidden, logits, targets, head = batch
    expected = snnl_ref(rows(hidden), TARGETS, temperature, numerator)
    assert snnl_term(hidden, targets, temperature, numerator).item() == pytest.approx(expected, rel=1e-12)
    regularizer = create_regularizer("snnl", weight=0.7, temperature=temperature, numerator=numerator)
    loss = regularizer.loss(hidden, logits, targets, head, NUM_CLASSES)
    assert loss.item() == pytest.approx(plain_ce(logits, targets) + 0.7 * expected, rel=1e-12)


def test_snnl_leaves_out_samples_with_an_empty_numerator(batch):
    hidden, _, targets, _ = batch
    # "same": sample 3 (the singleton class) is left out; the mean is over 4.
    kept = [i for i in range(5) if i != 3]
    per_sample = []
    hidden_rows = rows(hidden)
    for i in kept:
        top = sum(
            math.exp(-(distance(hidden_rows[i], hidden_rows[j]) ** 2) / 2.0)
            for j in range(5)
            if j != i and TARGETS[j] == TARGETS[i]
        )
        bottom = sum(math.exp(-(distance(hidden_rows[i], hidden_rows[k]) ** 2) / 2.0) for k in range(5) if k != i)
        per_sample.append(-math.log(top / bottom))
    assert snnl_term(hidden, targets, 2.0, "same").item() == pytest.approx(sum(per_sample) / 4, rel=1e-12)
    # "different" on a one-class batch: nobody has a numerator, the term is 0.
    one_class = torch.zeros(5, dtype=torch.int64)
    assert snnl_term(hidden, one_class, 2.0, "different").item() == 0.0


def test_snnl_is_stable_where_the_naive_ratio_underflows(batch):
    hidden, _, targets, _ = batch
    # exp(-d^2 / T) underflows to 0 in float64 at these scales; eq. 6 depends
    # only on d^2 / T, so scaling h by s and T by s^2 must not change it.
    reference = snnl_term(hidden, targets, 1.0, "different")
    scaled = snnl_term(hidden * 1000.0, targets, 1e6, "different")
    squeezed = snnl_term(hidden * 1000.0, targets, 1.0, "different")
    assert scaled.item() == pytest.approx(reference.item(), rel=1e-9)
    assert math.isfinite(squeezed.item()) and squeezed.item() > 0.0


def test_snnl_computes_in_float32_for_16_bit_hidden(batch):
    hidden, _, targets, _ = batch
    assert snnl_term(hidden.to(torch.bfloat16), targets, 4.0).dtype == torch.float32
    assert contrastive_term(hidden.to(torch.bfloat16), targets, NUM_CLASSES, 2.0).dtype == torch.float32


# ---- manifold mixup ---------------------------------------------------------


def test_mixup_draws_gamma_then_permutation_from_the_generator():
    gamma, permutation = draw_mixup(5, torch.Generator().manual_seed(7))
    twin = torch.Generator().manual_seed(7)
    assert gamma.item() == torch.rand((), generator=twin, dtype=torch.float64).item()
    assert torch.equal(permutation, torch.randperm(5, generator=twin))
    assert 0.0 <= gamma.item() < 1.0
    assert sorted(permutation.tolist()) == [0, 1, 2, 3, 4]


def test_mixup_matches_eqs_1_to_3_and_is_reproducible(batch):
    hidden, logits, targets, head = batch
    regularizer = create_regularizer("mixup")
    loss = regularizer.loss(hidden, logits, targets, head, NUM_CLASSES, torch.Generator().manual_seed(11))
    again = regularizer.loss(hidden, logits, targets, head, NUM_CLASSES, torch.Generator().manual_seed(11))
    assert torch.equal(loss, again)
    gamma, permutation = draw_mixup(5, torch.Generator().manual_seed(11))
    assert permutation.tolist() != [0, 1, 2, 3, 4]  # seed 11 mixes the batch
    expected = mixup_ref(rows(hidden), TARGETS, head, gamma.item(), permutation.tolist())
    assert loss.item() == pytest.approx(expected, rel=1e-12)  # weight 1.0: pure replacement
    blended = create_regularizer("mixup", weight=0.4).loss(
        hidden, logits, targets, head, NUM_CLASSES, torch.Generator().manual_seed(11)
    )
    assert blended.item() == pytest.approx(0.6 * plain_ce(logits, targets) + 0.4 * expected, rel=1e-12)


def test_mixup_loss_takes_a_float_gamma_and_gamma_one_is_plain_cross_entropy(batch):
    hidden, logits, targets, head = batch
    permutation = torch.tensor([4, 3, 2, 1, 0])
    assert mixup_loss(hidden, targets, head, NUM_CLASSES, 1.0, permutation).item() == pytest.approx(
        F.cross_entropy(logits, targets).item(), rel=1e-12
    )
    expected = mixup_ref(rows(hidden), TARGETS, head, 0.123456789, permutation.tolist())
    assert mixup_loss(hidden, targets, head, NUM_CLASSES, 0.123456789, permutation).item() == pytest.approx(
        expected, rel=1e-12
    )


# ---- gradients --------------------------------------------------------------


@pytest.mark.parametrize("name", ["none", "logit_squeeze", "mixup", "contrastive", "snnl"])
def test_gradients_flow_and_are_finite_even_for_coincident_hidden_vectors(batch, name):
    hidden, _, targets, head = batch
    # Samples 0 and 2 (same class) and 1 and 3 (different classes) coincide:
    # distance 0 is where a sqrt-based pairwise norm would give NaN gradients.
    hidden = hidden.clone()
    hidden[2], hidden[3] = hidden[0], hidden[1]
    hidden.requires_grad_(True)
    head.zero_grad()
    params = {"contrastive": {"margin": 2.0}, "snnl": {"temperature": 4.0}}.get(name, {})
    regularizer = create_regularizer(name, **params)
    loss = regularizer.loss(hidden, head(hidden), targets, head, NUM_CLASSES, torch.Generator().manual_seed(3))
    loss.backward()
    for grad in (hidden.grad, head.weight.grad, head.bias.grad):
        assert grad is not None and torch.isfinite(grad).all()
    assert hidden.grad.abs().sum() > 0
    if name != "none":
        # the term's own gradient with respect to h is not the cross-entropy's
        ce_only = hidden.detach().clone().requires_grad_(True)
        F.cross_entropy(head(ce_only), targets).backward()
        assert not torch.allclose(hidden.grad, ce_only.grad)
