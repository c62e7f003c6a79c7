"""Where the time goes: torch.profiler by operator, for log p(x) at K = 5000 and for fit's
training steps, on the seed network.

    python benchmarks/profile_ops.py [--data-dir ../shared/data/mnist] [--rows 22]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import pyro
import torch
from _machine import cpu_model  # benchmarks/ is on sys.path when a script runs
from torch.profiler import ProfilerActivity, profile

from ppl_vae import build_vae, fit, log_likelihood
from ppl_vae.data.datasets import load_dataset


def table(prof, rows: int) -> str:
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--rows", type=int, default=22, help="operators shown")
    args = parser.parse_args()
    pyro.enable_validation(False)
    data = load_dataset("mnist", data_dir=args.data_dir, seed=0)
    print(f"CPU {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    torch.manual_seed(0)
    vae = build_vae(784, preset="seed").eval()
    x = data.test[:6]
    log_likelihood(vae.model, vae.guide, x[:1], num_samples=5000)
    start = time.perf_counter()
    log_likelihood(vae.model, vae.guide, x, num_samples=5000)
    print(f"\nlog_likelihood, K = 5000: {(time.perf_counter() - start) / len(x) * 1e3:.1f} ms")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        log_likelihood(vae.model, vae.guide, x, num_samples=5000)
    print(table(prof, args.rows))
    train = dataclasses.replace(data, train=data.train[:3000], val=None)
    fit(vae, train, epochs=1, progress=False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fit(vae, train, epochs=1, progress=False)
    print("\nfit, one epoch of 30 steps (batch 100)")
    print(table(prof, args.rows))


if __name__ == "__main__":
    main()
