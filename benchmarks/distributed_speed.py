"""Training steps per second and log p(x) images per second over 1 and 2 processes
(torch.distributed, gloo), beside one process with as many threads, on the seed network.

Every configuration trains the seed network (784-300-300-50, softplus, Bernoulli) with a
global batch of 100 binarized MNIST rows through ``ppl_vae.fit`` (under torchrun each of P
processes takes 100 / P rows of every batch), and estimates log p(x) at K = 5000 for a few
test images with ``log_likelihood(..., distributed=True)``. Each configuration runs in its
own launch, one after another, so they never share the cores; the table shows medians over
steps, and the GFLOP/s each reaches against the machine's measured matrix-product peak.

    python benchmarks/distributed_speed.py [--data-dir ../shared/data/mnist] [--steps 120]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _machine import STEP_FLOP, cpu_model, loglik_flop, matmul_peak  # benchmarks/ on sys.path


def worker(args: argparse.Namespace) -> None:
    """One configuration: time fit's steps, then log p(x); rank 0 prints one JSON line."""
    from ppl_vae import build_vae, fit, log_likelihood
    from ppl_vae.data.datasets import load_dataset
    from ppl_vae.runtime.distributed import init_from_env, leave

    torch.set_num_threads(args.threads)
    world, device = init_from_env(args.device)
    data = load_dataset("mnist" if args.data_dir else "mnist5k", data_dir=args.data_dir, seed=0)
    rows = data.train[: args.steps * 100].to(device)
    torch.manual_seed(0)
    vae = build_vae(784, preset="seed").to(device)
    stamps = []

    def clock(epoch: int, step: int, loss: float) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    import dataclasses

    splits = dataclasses.replace(data, train=rows, val=data.val[:100].to(device))
    fit(vae, splits, epochs=1, batch_size=100, progress=False, callback=clock, seed=0)
    gaps = [b - a for a, b in zip(stamps[10:], stamps[11:], strict=False)]
    step_s = statistics.median(gaps)
    x = data.test[: args.images].to(device)
    log_likelihood(vae.model, vae.guide, x[:1], num_samples=500, seed=0)  # warm up
    start = time.perf_counter()
    lp = log_likelihood(
        vae.model, vae.guide, x, num_samples=5000, seed=0, distributed=world.active
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    image_s = (time.perf_counter() - start) / len(x)
    if world.root:
        print(json.dumps({"step_s": step_s, "image_s": image_s, "log_px": lp.mean().item()}))
    leave()


def launch(processes: int, threads: int, args: argparse.Namespace) -> dict:
    """Run :func:`worker` in ``processes`` processes of ``threads`` threads each."""
    script = [str(Path(__file__).resolve()), "--worker", "--threads", str(threads)]
    script += ["--steps", str(args.steps), "--images", str(args.images), "--device", args.device]
    if args.data_dir:
        script += ["--data-dir", args.data_dir]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if processes == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc-per-node", str(processes), *script]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="MNIST IDX files (default: mnist5k)")
    parser.add_argument("--steps", type=int, default=120, help="training steps timed per row")
    parser.add_argument("--images", type=int, default=8, help="test images for log p(x)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    cores = os.cpu_count() or 1
    peak = {t: matmul_peak(t) for t in sorted({1, cores})}
    print(f"CPU: {cpu_model()}, {cores} cores, torch {torch.__version__}, device {args.device}")
    print("float32 1024-square matrix product: " + ", ".join(
        f"{p:.0f} GFLOP/s with {t} thread{'s' * (t > 1)}" for t, p in peak.items()
    ))  # fmt: skip
    rows = [(1, 1), (1, cores), (cores, 1)] if args.device == "cpu" else [(1, 1)]
    results = {(p, t): launch(p, t, args) for p, t in rows}
    base = results[rows[-1] if args.device != "cpu" else (1, cores)]
    print()
    print("| processes x threads | ms per step | steps/s | x 1 process | GFLOP/s | "
          "log p(x) s/image (K=5000) | images/s | x 1 process | GFLOP/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for (p, t), r in results.items():
        image_rate = loglik_flop(5000) / r["image_s"] / 1e9
        print(
            f"| {p} x {t} | {1e3 * r['step_s']:.2f} | {1 / r['step_s']:.1f} | "
            f"{base['step_s'] / r['step_s']:.2f} | {STEP_FLOP / r['step_s'] / 1e9:.0f} | "
            f"{r['image_s']:.3f} | {1 / r['image_s']:.1f} | "
            f"{base['image_s'] / r['image_s']:.2f} | {image_rate:.0f} |"
        )
    if args.device == "cpu":
        print(f"\nthe peak with all {cores} threads is {peak[cores]:.0f} GFLOP/s")
    spread = [r["log_px"] for r in results.values()]
    print(f"mean log p(x) of the {args.images} images per row: {[round(v, 3) for v in spread]}")


if __name__ == "__main__":
    main()
