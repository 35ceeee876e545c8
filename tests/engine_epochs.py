"""Shared by the engine tests: a few epochs of the engine on a small synthetic set, on any device.

Not a test module; tests/test_train.py (CPU) and tests/test_cuda.py (CUDA) import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backdoor_eval import train as engine
from backdoor_eval.models import create_model
from backdoor_eval.regularizers import create_regularizer

NUM_CLASSES = 3

# Agreement of two float32 runs whose kernels differ (CPU vs CUDA, compiled vs eager, fused vs looped Adam):
# the mean loss of each epoch to LOSS_RTOL (relative) and the eval-mode logits of the probe images to
# LOGITS_ATOL (they are about 0.1 in size). Measured on the CPU, two epochs with mixup: compiled vs eager
# 2.3e-4 and 2.0e-3 (inductor reorders sums, as batch norm's; Adam's normalised steps amplify it); fused vs
# looped Adam 1.6e-8 and 3e-7. A misplaced draw, batch or step differs by more than 1e-2 in the loss.
LOSS_RTOL = 1e-3
LOGITS_ATOL = 1e-2


@dataclass
class Trained:
    losses: list[float]  # mean training loss per epoch
    state: dict[str, torch.Tensor]  # final weights, on the CPU
    logits: torch.Tensor  # float32 logits of the probe images, eval mode, on the CPU


def synthetic(n: int = 96, size: int = 16, seed: int = 123, separable: bool = False):
    """uint8 NHWC images and labels; ``separable``: the class is which third of the image is bright."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    if not separable:
        images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=generator)
        return images, labels
    images = torch.randint(0, 96, (n, size, size, 3), dtype=torch.uint8, generator=generator)
    third = size // NUM_CLASSES
    for label in range(NUM_CLASSES):
        images[labels == label, :, label * third : (label + 1) * third] += 128
    return images, labels


def train_epochs(
    device: str,
    epochs: int = 1,
    regularizer: str = "none",
    regularizer_params: dict | None = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    width: int = 8,
    init_state: dict[str, torch.Tensor] | None = None,
    epoch=None,
    **settings,
) -> Trained:
    """Train a small CNN for ``epochs`` with ``TrainConfig(**settings)`` on ``device``; the same weights
    (``init_state``, else seed 0's), data and epoch generators whatever the device and settings.
    ``epoch(engine, optimizer, images, labels, generator)`` replaces ``Engine.train_epoch`` if given."""
    cfg = engine.TrainConfig(**{"batch_size": 16, "lr": 1e-3, **settings})
    target = torch.device(device)
    engine.set_determinism(cfg, target)
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=NUM_CLASSES, pretrained=False, width=width)
    if init_state is not None:
        model.load_state_dict(init_state)
    run = engine.Engine(
        model, create_regularizer(regularizer, **(regularizer_params or {})), cfg, NUM_CLASSES, target, seed=0
    )
    images, labels = synthetic() if data is None else data
    images, labels = images.to(target), labels.to(target)
    optimizer = engine.OPTIMIZERS.get(cfg.optimizer)(run.model.parameters(), cfg, cfg.lr)
    losses = []
    for index in range(epochs):
        generator = torch.Generator().manual_seed(1000 + index)
        if epoch is None:
            losses.append(run.train_epoch(optimizer, images, labels, generator))
        else:
            losses.append(epoch(run, optimizer, images, labels, generator))
    run.model.eval()
    with torch.no_grad():
        logits = run.model(run.prepare(images[:32])).float().cpu()
    state = {name: tensor.detach().cpu().clone() for name, tensor in run.model.state_dict().items()}
    return Trained(losses=losses, state=state, logits=logits)


def initial_state(width: int = 8) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=NUM_CLASSES, pretrained=False, width=width)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def max_weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
