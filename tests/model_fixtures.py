"""Shared by the test_models*.py files: small model configurations, one torch thread, Cadene reference data.

Not a test module; the test files import it (pytest puts tests/ on sys.path), and
tests/data/make_nasnet_mobile_reference.py loads it for :func:`random_cadene_state_dict`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
CADENE_SHAPES = DATA / "nasnet_mobile_cadene_state_dict_shapes.json"
CADENE_LOGITS = DATA / "nasnet_mobile_cadene_reference_logits.json"

# small configurations so that every model runs in well under a second on a CPU; every registered
# model needs one (test_models.py checks)
SMALL = {
    "small_cnn": dict(width=4),
    "resnet18": {},
    "resnet50": {},
    "nasnet_large": dict(num_features=192, stem_size=8),
    "nasnet_mobile": dict(cells_per_stage=2, num_features=192, stem_size=8),
    "timm:mobilenetv3_small_050": {},  # h (1024) is wider than the last feature map (288)
}
NUM_FEATURES = {
    "small_cnn": 32,
    "resnet18": 512,
    "resnet50": 2048,
    "nasnet_large": 192,
    "nasnet_mobile": 192,
    "timm:mobilenetv3_small_050": 1024,
}


@pytest.fixture(autouse=True)
def one_thread():
    # one intra-op thread: on a busy 2-core machine two threads spin against each other (10x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cadene_reference() -> list[tuple[str, tuple[int, ...]]]:
    data = json.loads(CADENE_SHAPES.read_text())
    return [(key, tuple(shape)) for key, shape in data["state_dict"]]


def random_cadene_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors with the Cadene checkpoint's keys and shapes; BatchNorm statistics kept plausible."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in cadene_reference():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.long)
        elif key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 10
            state[key] = torch.randn(shape, generator=generator) / fan_in**0.5
    return state
