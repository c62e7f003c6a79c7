"""What subnormal floats cost IWAE training, epoch by epoch, with and without flush-to-zero.

The IWAE gradient weights each particle by its normalized importance weight; for a poor
particle that weight times a pixel's residual is often below 1.2e-38, a subnormal float32, and
on x86 each subnormal operand of a matrix product costs a microcode assist. So a step slows
down as training sharpens the weights. ``fit`` trains under
``ppl_vae.runtime.flush_denormals`` (``denormals="flush"``, the default). This trains five
copies of the seed network (784-300-300-50, softplus, Bernoulli) with the k-particle IWAE
bound on the same rows, one epoch of each in turn, and prints every epoch's ms per step:

- the hand-written batched PyTorch IWAE step (``train_speed.plain_iwae_epoch``), as users run
  it, and the same inside ``flush_denormals``;
- ``fit(objective="iwae")`` with ``denormals="keep"`` and with the default ``"flush"``;
- pythae 0.1.2's IWAE through its ``BaseTrainer``, as users run it (when installed).

It also counts the subnormal values in the decoder's output gradient of the hand-written step
as users run it (the last step of each epoch).

Usage: ``python benchmarks/denormals.py [--data-dir ../shared/data/mnist] [--epochs 10]
[--rows 2000] [--k 50] [--threads 2]``
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # pythae's trainer draws a progress bar per epoch

import pyro  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, mnist_or_smoke  # noqa: E402
from _peers import pythae_model, train_pythae  # noqa: E402
from train_speed import plain_iwae_epoch  # noqa: E402

from ppl_vae import build_vae, fit  # noqa: E402
from ppl_vae.models.reference import plain_copy
from ppl_vae.runtime.kernels import flush_denormals


def subnormal_share(vae) -> list[float]:
    """Register a hook on the decoder's last layer that records the share of subnormal values
    in the gradient of its output at each backward pass; return the list it fills."""
    shares: list[float] = []
    tiny = torch.finfo(torch.float32).tiny
    last = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]

    def forward_hook(module, inputs, output):
        if output.requires_grad:
            output.register_hook(
                lambda g: shares.append(float(((g != 0) & (g.abs() < tiny)).float().mean()))
            )

    last.register_forward_hook(forward_hook)
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rows", type=int, default=2000, help="training rows per epoch")
    parser.add_argument("--k", type=int, default=50, help="IWAE particles")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    data = mnist_or_smoke(args.data_dir)
    x = data.train[: args.rows]
    train = dataclasses.replace(data, train=x, val=None)
    steps = -(-len(x) // 100)
    torch.manual_seed(0)
    base = build_vae(784)
    plain, plain_flush = plain_copy(base), plain_copy(base)
    shares = subnormal_share(plain)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    flush_opt = torch.optim.Adam(plain_flush.parameters(), lr=1e-3)
    gens = {key: torch.Generator().manual_seed(0) for key in ("plain", "flush", "pythae")}
    kept, flushed = copy.deepcopy(base), copy.deepcopy(base)

    def run_fit(vae, denormals):
        return lambda: fit(
            vae,
            train,
            epochs=1,
            objective="iwae",
            particles=args.k,
            progress=False,
            compile="off",
            denormals=denormals,
        )

    def plain_flushed():
        with flush_denormals():
            plain_iwae_epoch(plain_flush, flush_opt, x, gens["flush"], args.k)

    variants = {
        "plain PyTorch": lambda: plain_iwae_epoch(plain, plain_opt, x, gens["plain"], args.k),
        "plain PyTorch, flush_denormals": plain_flushed,
        "fit, denormals='keep'": run_fit(kept, "keep"),
        "fit (denormals='flush')": run_fit(flushed, "flush"),
    }
    pmodel = pythae_model("iwae", plain_copy(base), k=args.k)
    if pmodel is not None:
        variants["pythae 0.1.2 IWAE"] = lambda: train_pythae(
            pmodel, torch.bernoulli(x, generator=gens["pythae"]), 1, dynamic=False, seed=8
        )
    else:
        print(
            "pythae is not installed: its column is skipped (pip install pythae==0.1.2 --no-deps)"
        )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu_model()}")
    print(
        f"IWAE k = {args.k}, seed network, {len(x)} rows, batch 100, {steps} steps an epoch; "
        "ms per step of each epoch, variants interleaved epoch by epoch"
    )
    names = list(variants)
    print("\n| epoch | " + " | ".join(names) + " | subnormal share of d logits (plain) |")
    print("|---" * (len(names) + 2) + "|")
    times: dict[str, list[float]] = {name: [] for name in names}
    for epoch in range(1, args.epochs + 1):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - started) / steps * 1e3)
        cells = " | ".join(f"{times[name][-1]:.1f}" for name in names)
        print(f"| {epoch} | {cells} | {100 * shares[-1]:.3f}% |", flush=True)
    means = {name: statistics.fmean(ts) for name, ts in times.items()}
    cells = " | ".join(f"{means[name]:.1f}" for name in names)
    print(f"| mean | {cells} | |")
    ref = means["plain PyTorch"]
    print(
        "\nmean ms per step over the run, and its ratio to the hand-written step as users run it:"
    )
    for name in names:
        print(f"  {name}: {means[name]:.1f} ms, {means[name] / ref:.3f}")


if __name__ == "__main__":
    main()
