"""Training throughput (images/s) per model, and the share of epoch time spent outside forward/backward.

    .venv/bin/python benchmarks/bench_train.py                      # CPU, 32x32, every model
    .venv/bin/python benchmarks/bench_train.py --device cuda --sizes 32 224 --fast both

For each model it times (1) ``Engine.train_epoch`` over a uint8 dataset held on
the device (the engine's real path: gather, convert, normalise, regularizer,
step) and (2) the bare forward/backward/step on pre-made float batches, in the
same process, and prints both rates and the overhead share 1 - (2)/(1).
On CUDA, ``--fast on`` is bf16 autocast + channels-last + cuDNN benchmark,
``--fast off`` is float32, NCHW, deterministic kernels.
"""

from __future__ import annotations

import argparse
import time

import torch

from backdoor_eval import train as engine
from backdoor_eval.models import MODELS, create_model
from backdoor_eval.regularizers import create_regularizer


def bench(
    model_name: str, size: int, device: torch.device, fast: bool, images_count: int, batch: int, repeats: int
) -> dict:
    cfg = engine.TrainConfig(batch_size=batch, amp=fast, channels_last=fast, deterministic=not fast, lr=1e-4)
    engine.set_determinism(cfg, device)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, pretrained=False)
    run = engine.Engine(model, create_regularizer("none"), cfg, 10, device, seed=0)
    images = torch.randint(0, 256, (images_count, size, size, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (images_count,), device=device)
    optimizer = engine.OPTIMIZERS.get("adam")(run.model.parameters(), cfg, cfg.lr)
    generator = torch.Generator().manual_seed(0)
    run.train_epoch(optimizer, images[: batch * 2], labels[: batch * 2], generator)  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # Bare forward/backward/step on batches prepared beforehand.
    batches = [(run.prepare(images[i : i + batch]), labels[i : i + batch]) for i in range(0, images_count, batch)]

    def bare_epoch() -> None:
        run.model.train()
        for x, y in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.autocast):
                logits = run.model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def timed(fn) -> float:
        sync()
        tic = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - tic

    # Interleaved repeats, best of each: the two paths see the same machine load.
    epoch_seconds, bare_seconds = float("inf"), float("inf")
    for _ in range(repeats):
        epoch_seconds = min(epoch_seconds, timed(lambda: run.train_epoch(optimizer, images, labels, generator)))
        bare_seconds = min(bare_seconds, timed(bare_epoch))
    return {
        "model": model_name,
        "size": size,
        "device": device.type,
        "fast": fast,
        "images_per_s": images_count / epoch_seconds,
        "bare_images_per_s": images_count / bare_seconds,
        "overhead_share": max(0.0, 1 - bare_seconds / epoch_seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--models", nargs="*", default=["small_cnn", "resnet18", "resnet50", "nasnet_mobile", "nasnet_large"]
    )
    parser.add_argument("--sizes", nargs="*", type=int, default=[32])
    parser.add_argument("--fast", choices=["on", "off", "both"], default="on")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best of each is kept")
    args = parser.parse_args()
    device = torch.device(args.device)
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.fast]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    print(f"{'model':<14} {'size':>4} {'fast':>5} {'img/s':>9} {'bare img/s':>11} {'outside fwd/bwd':>16}")
    for name in args.models:
        if name not in MODELS:
            print(f"{name:<14} not registered, skipped")
            continue
        for size in args.sizes:
            for fast in modes:
                r = bench(name, size, device, fast, args.images, args.batch, args.repeats)
                print(
                    f"{r['model']:<14} {r['size']:>4} {str(r['fast']):>5} {r['images_per_s']:>9.1f} "
                    f"{r['bare_images_per_s']:>11.1f} {r['overhead_share']:>15.1%}"
                )


if __name__ == "__main__":
    main()
