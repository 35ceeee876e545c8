"""The engine on a CUDA device (marker ``cuda``; skipped without one): agreement with the CPU, the fast path
learns, compiled and fused training agree with eager, and two train jobs share one GPU.

Run on a GPU machine with ``pytest -m cuda tests/test_cuda.py`` (``benchmarks/gpu_check.sh`` does, and
records what these tests print: the measured differences).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from engine_epochs import LOGITS_ATOL, LOSS_RTOL, initial_state, max_weight_difference, synthetic, train_epochs
from run_inputs import poisoned_synthetic_run

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible"),
]

# float32 on both devices (TF32 and amp off): the kernels differ (cuDNN vs oneDNN), so the results agree to
# rounding, amplified by Adam's normalised steps; tolerances: tests/engine_epochs.py.


@pytest.fixture
def float32_exact():
    """TF32 off for matmuls and convolutions, restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def report(what: str, **numbers) -> None:
    """One line the GPU check's results file keeps (run pytest with -s)."""
    print(f"\n[measured] {what}: " + ", ".join(f"{k}={v:.3g}" for k, v in numbers.items()))


@pytest.mark.parametrize("regularizer,augment", [("none", "none"), ("mixup", "flip")])
def test_one_small_cnn_epoch_on_cuda_agrees_with_the_cpu(float32_exact, regularizer, augment):
    """amp and channels-last off: the same weights, data and draws give the same epoch to float32 rounding.
    With mixup and flips the draws are staged on the device once per epoch: a misplaced draw would not agree."""
    init = initial_state()
    settings = dict(amp=False, channels_last=False, deterministic=True, augment=augment, lr=1e-3)
    params = {"weight": 0.5} if regularizer == "mixup" else {}
    cpu = train_epochs("cpu", regularizer=regularizer, regularizer_params=params, init_state=init, **settings)
    gpu = train_epochs("cuda", regularizer=regularizer, regularizer_params=params, init_state=init, **settings)
    loss_rel = abs(gpu.losses[0] - cpu.losses[0]) / abs(cpu.losses[0])
    logits = float((gpu.logits - cpu.logits).abs().max())
    report(
        f"CUDA vs CPU, one epoch, {regularizer}/{augment}",
        loss_rel=loss_rel,
        logits_max_abs=logits,
        weights_max_abs=max_weight_difference(gpu.state, cpu.state),
    )
    assert loss_rel < LOSS_RTOL
    assert logits < LOGITS_ATOL


def test_amp_and_channels_last_train_and_learn():
    """bf16 autocast and channels-last (the GPU configs' fast path): the loss falls and a separable set is
    learned."""
    data = synthetic(n=192, separable=True)
    run = train_epochs("cuda", epochs=6, data=data, amp=True, channels_last=True, deterministic=False, lr=3e-3)
    accuracy = float((run.logits.argmax(1) == data[1][:32]).float().mean())
    report("amp + channels-last, 6 epochs", first_loss=run.losses[0], last_loss=run.losses[-1], accuracy=accuracy)
    assert all(torch.isfinite(torch.tensor(run.losses)))
    assert run.losses[-1] < 0.5 * run.losses[0]
    assert accuracy >= 0.9


@pytest.mark.parametrize("option", ["compile", "fused_optimizer"])
def test_compiled_and_fused_training_agree_with_eager_on_cuda(float32_exact, option):
    init = initial_state()
    # deterministic: no cuDNN autotuning, which could pick other kernels for the two runs.
    settings = dict(amp=False, channels_last=False, deterministic=True, regularizer="mixup", epochs=2)
    eager = train_epochs("cuda", init_state=init, **settings)
    other = train_epochs("cuda", init_state=init, **settings, **{option: True})
    loss_rel = max(abs(a - b) / abs(b) for a, b in zip(other.losses, eager.losses))
    logits = float((other.logits - eager.logits).abs().max())
    report(f"{option} vs eager, CUDA, two epochs", loss_rel=loss_rel, logits_max_abs=logits)
    assert loss_rel < LOSS_RTOL
    assert logits < LOGITS_ATOL


def test_two_train_jobs_share_one_device(tmp_path):
    """jobs_per_gpu 2 on one GPU: two `train` processes run on cuda:0 at once (slots 0 and 1) and both finish."""
    root, store, parts, poisoned = poisoned_synthetic_run(
        tmp_path, {"num_classes": 3, "per_class": 60, "size": 16, "seed": 0}
    )
    env = {**os.environ, "BACKDOOR_EVAL_NUM_GPUS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    train = {"lr": 1e-3, "batch_size": 16, "max_epochs": 3, "patience": 3, "checkpoint_every_s": 0}

    def command(name: str) -> list[str]:
        out = tmp_path / name
        return [
            sys.executable, "-m", "backdoor_eval.cli", "train", "--store", str(store), "--partitions", str(parts),
            "--poisoned", str(poisoned), "--model", "small_cnn", "--model-params", '{"width": 8}',
            "--train-params", json.dumps(train), "--seed", "0", "--device", "cuda",
            "--gpu-lock-dir", str(tmp_path / "locks"), "--jobs-per-gpu", "2",
            "--checkpoint", str(tmp_path / f"{name}.pt"),
            "--out-model", str(out / "model.pt"), "--out-epochs", str(out / "epochs.parquet"),
            "--out-final", str(out / "final.json"),
        ]  # fmt: skip

    jobs = [subprocess.Popen(command(name), stderr=subprocess.PIPE, text=True, env=env) for name in ("a", "b")]
    errors = [job.communicate(timeout=240)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], "\n".join(e[-2000:] for e in errors)
    finals = [json.loads((tmp_path / name / "final.json").read_text()) for name in ("a", "b")]
    assert {final["device"] for final in finals} == {"cuda"}
    assert [final["cuda_visible_devices"] for final in finals] == ["0", "0"]
    # The second job found slot 0 held: the two ran on the one GPU at the same time.
    assert sorted(final["gpu_slot"] for final in finals) == [0, 1]
