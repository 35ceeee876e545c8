"""Training throughput (images/s) per model: the engine's step before and after the host-sync removal, side by side.

    .venv/bin/python benchmarks/bench_train.py                      # CPU, 32x32, every model
    .venv/bin/python benchmarks/bench_train.py --device cuda --sizes paper --compile both

For each model, size and setting it times, interleaved in one process (best of
``--repeats``), three epochs over the same uint8 dataset held on the device:

- ``sync``: the engine's step as it was before (kept here, :func:`per_step_sync_epoch`, as the
  reference): every step copies its batch indices, flips and mixup draws from the host and reads
  the loss back (``loss.item()``), so the host waits for the device three to six times a step;
- ``engine``: ``Engine.train_epoch`` now: the epoch's order and draws staged on the device once,
  the loss read once per epoch;
- ``bare``: forward/backward/step alone on batches prepared beforehand (the floor).

and prints the three rates, the engine's gain over ``sync`` and the share of its time outside
forward/backward. On CUDA, ``--fast on`` is bf16 autocast + channels-last + cuDNN autotuning,
``--fast off`` float32, NCHW, deterministic kernels; ``--compile on`` adds torch.compile (its
compilation is timed apart, as ``compile s``). ``--sizes paper`` trains each model at its input
size in ``config/config.yaml`` (CIFAR-10: NASNet-A Large 331, Mobile 224, ResNet-50 32; 32 for a
model it lacks). ``--json FILE`` also writes the rows. ``--clock cpu`` (CPU device only) times the
process's CPU time instead of the elapsed time: steadier where other work shares the cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from backdoor_eval import train as engine
from backdoor_eval.models import MODELS, create_model
from backdoor_eval.regularizers import create_regularizer

REPO = Path(__file__).resolve().parents[1]


def per_step_sync_epoch(run: engine.Engine, optimizer, images, labels, generator: torch.Generator) -> float:
    """The training step before the host-sync removal, verbatim but for the names (the reference).

    Per step: the batch indices are copied to the device (twice), the flips drawn on the host and
    copied, the regularizer draws on the host (mixup copies them in its loss), and the loss read
    back with ``loss.item()``. The draws come from ``generator`` in the same order as the engine's.
    """
    run.model.train()
    n = len(labels)
    order = torch.randperm(n, generator=generator)
    total, count = 0.0, 0
    for start in range(0, n, run.cfg.batch_size):
        idx = order[start : start + run.cfg.batch_size]
        if len(idx) < 2 and n >= 2:
            continue
        flip = torch.rand(len(idx), generator=generator) < 0.5 if run.cfg.augment == "flip" else None
        x = run.prepare(images[idx.to(images.device)], flip)
        y = labels[idx.to(labels.device)].to(run.device)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.autocast):
            hidden, logits = run.forward_hidden(x)
        loss = run.regularizer.loss(hidden.float(), logits.float(), y, run.model.head, run.num_classes, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        count += len(idx)
    return total / max(count, 1)


def paper_sizes() -> dict[str, int]:
    """Each model's CIFAR-10 input size in config/config.yaml (None there: the native 32 px)."""
    import yaml

    from backdoor_eval import configview as cv

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return {model: cv.train_params(config, "cifar10", model).get("input_size") or 32 for model in config["models"]}


def bench(
    model_name: str,
    size: int,
    device: torch.device,
    fast: bool,
    compiled: bool,
    images_count: int,
    batch: int,
    repeats: int,
    regularizer: str,
    augment: str,
    clock=time.perf_counter,
) -> dict:
    cfg = engine.TrainConfig(
        batch_size=batch,
        amp=fast,
        channels_last=fast,
        deterministic=not fast,
        lr=1e-4,
        compile=compiled,
        augment=augment,
    )
    engine.set_determinism(cfg, device)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, pretrained=False)
    run = engine.Engine(model, create_regularizer(regularizer), cfg, 10, device, seed=0)
    images = torch.randint(0, 256, (images_count, size, size, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (images_count,), device=device)
    optimizer = engine.OPTIMIZERS.get("adam")(run.model.parameters(), cfg, cfg.lr)
    generator = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn) -> float:
        sync()
        tic = clock()
        fn()
        sync()
        return clock() - tic

    # Warm-up (and, compiled, the compilation): two batches through each path.
    warm = timed(lambda: run.train_epoch(optimizer, images[: batch * 2], labels[: batch * 2], generator))
    per_step_sync_epoch(run, optimizer, images[: batch * 2], labels[: batch * 2], generator)

    # Bare forward/backward/step on batches prepared beforehand.
    batches = [(run.prepare(images[i : i + batch]), labels[i : i + batch]) for i in range(0, images_count, batch)]

    def bare_epoch() -> None:
        run.model.train()
        for x, y in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.autocast):
                logits = run.forward_hidden(x)[1]
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    bare_epoch()
    # Interleaved repeats, best of each: the three paths see the same machine load.
    best = {"sync": float("inf"), "engine": float("inf"), "bare": float("inf")}
    for _ in range(repeats):
        best["sync"] = min(best["sync"], timed(lambda: per_step_sync_epoch(run, optimizer, images, labels, generator)))
        best["engine"] = min(best["engine"], timed(lambda: run.train_epoch(optimizer, images, labels, generator)))
        best["bare"] = min(best["bare"], timed(bare_epoch))
    return {
        "model": model_name,
        "size": size,
        "device": device.type,
        "fast": fast,
        "compile": compiled,
        "regularizer": regularizer,
        "augment": augment,
        "batch": batch,
        "images": images_count,
        "warmup_s": warm,
        "sync_images_per_s": images_count / best["sync"],
        "images_per_s": images_count / best["engine"],
        "bare_images_per_s": images_count / best["bare"],
        "gain_over_sync": best["sync"] / best["engine"] - 1,
        "overhead_share": max(0.0, 1 - best["bare"] / best["engine"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--models", nargs="*", default=["small_cnn", "resnet18", "resnet50", "nasnet_mobile", "nasnet_large"]
    )
    parser.add_argument("--sizes", nargs="*", default=["32"], help="input sides in px, or 'paper' (config/config.yaml)")
    parser.add_argument("--fast", choices=["on", "off", "both"], default="on")
    parser.add_argument("--compile", choices=["on", "off", "both"], default="off")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best of each is kept")
    parser.add_argument("--regularizer", default="none", help="the training loss (mixup has per-step draws)")
    parser.add_argument("--augment", default="none", choices=["none", "flip"])
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (CPU device only; steadier on a shared machine)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu measures the host's work only: use it with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    modes = {"on": [True], "off": [False], "both": [True, False]}
    paper = paper_sizes() if "paper" in args.sizes else {}
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, {args.clock} clock, "
        f"{args.regularizer} regularizer, augment {args.augment}, batch {args.batch}, {args.images} images",
        flush=True,
    )
    header = (
        f"{'model':<14} {'size':>4} {'fast':>5} {'compile':>7} {'sync img/s':>11} {'engine img/s':>13} "
        f"{'gain':>6} {'bare img/s':>11} {'outside fwd/bwd':>16} {'warm-up s':>10}"
    )
    print(header, flush=True)
    rows = []
    for name in args.models:
        if name not in MODELS:
            print(f"{name:<14} not registered, skipped")
            continue
        sizes = [paper.get(name, 32) if size == "paper" else int(size) for size in args.sizes]
        for size in sizes:
            for fast in modes[args.fast]:
                for compiled in modes[args.compile]:
                    r = bench(
                        name,
                        size,
                        device,
                        fast,
                        compiled,
                        args.images,
                        args.batch,
                        args.repeats,
                        args.regularizer,
                        args.augment,
                        clock,
                    )
                    rows.append(r)
                    print(
                        f"{r['model']:<14} {r['size']:>4} {str(r['fast']):>5} {str(r['compile']):>7} "
                        f"{r['sync_images_per_s']:>11.1f} {r['images_per_s']:>13.1f} {r['gain_over_sync']:>6.1%} "
                        f"{r['bare_images_per_s']:>11.1f} {r['overhead_share']:>15.1%} {r['warmup_s']:>10.1f}",
                        flush=True,
                    )
                    if args.json:
                        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
