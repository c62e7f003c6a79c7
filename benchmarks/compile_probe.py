"""What ``torch.compile`` would buy the seed network's training step, measured side by side.

Four variants of one analytic-KL ELBO step (batch 100, 784-300-300-50 softplus, Bernoulli,
fused Adam), interleaved, median of ``--repeats``:

- ``eager torch``: the loss written in plain torch (the networks, the reparameterized draw,
  ``x h - softplus(h)``, the closed-form KL), run eagerly;
- ``compiled loss``: that same function under ``torch.compile`` (inductor, with eager random
  numbers: ``fallback_random``), so elementwise work fuses across the networks' boundaries;
- ``compiled nets``: only the two MLPs compiled, the loss arithmetic eager (what compiling a
  program's modules would give, since the likelihood lives in a Pyro distribution);
- ``fit's engine``: ``ppl_vae``'s own step on the built-in VAE (the Pyro program), eager, and
  the same loss function under ``torch.compile``, with the graph breaks dynamo reports.

Usage: ``python benchmarks/compile_probe.py [--threads 2] [--repeats 5] [--steps 200]``.
The first call of each compiled variant pays its compilation, which is reported apart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._dynamo
import torch._inductor.config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import STEP_FLOP, cpu_model, matmul_peak  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ppl_vae import build_vae
    from ppl_vae.objectives.factory import make_objective
    from ppl_vae.program import as_program
    from ppl_vae.runtime.kernels import softplus
    from ppl_vae.training.engines import FastEngine

    torch._inductor.config.fallback_random = True
    torch.manual_seed(0)
    vae = build_vae(784, z_dim=50, hidden=(300, 300))
    enc, dec = vae.encoder.net, vae.decoder.net
    x = torch.bernoulli(torch.rand(100, 784))
    program = as_program(vae)
    program.find_parameters(x)
    engine = FastEngine(program, make_objective("mean-field"), 1e-3, 1.0)

    def plain_loss(x: torch.Tensor, enc=enc, dec=dec) -> torch.Tensor:
        mu, log_var = enc(x).chunk(2, -1)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        h = dec(z)
        kl = 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var).sum()
        return kl - (x * h - softplus(h)).sum()

    enc_c, dec_c = torch.compile(enc), torch.compile(dec)

    def engine_loss(x: torch.Tensor) -> torch.Tensor:
        return engine.objective.differentiable_loss(engine.model, engine.guide, x)

    variants = {
        "eager torch": plain_loss,
        "compiled loss": torch.compile(plain_loss),
        "compiled nets": lambda x: plain_loss(x, enc_c, dec_c),
        "fit's engine, eager": engine_loss,
        "fit's engine, compiled": torch.compile(engine_loss),
    }
    optimizer = engine.optimizer  # fused Adam over the same parameters

    def run(loss_fn, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            loss = loss_fn(x) / 100
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - started) / steps * 1e3

    setup = {}  # name -> (seconds of the first 2 steps, which compile; dynamo's graph breaks)
    for name, fn in variants.items():
        torch._dynamo.utils.counters.clear()
        seconds = run(fn, 2) * 2 / 1e3
        setup[name] = (seconds, sum(torch._dynamo.utils.counters["graph_break"].values()))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            run(fn, 20)
            times[name].append(run(fn, args.steps))
    peak = matmul_peak()
    print(f"{cpu_model()}, {args.threads} threads, torch {torch.__version__}")
    print(f"float32 1024-square matrix product: {peak:.0f} GFLOP/s")
    base = statistics.median(times["eager torch"])
    print("| variant | ms per step | ratio to eager | % of peak | first 2 steps s | breaks |")
    print("|---|---|---|---|---|---|")
    for name in variants:
        ms = statistics.median(times[name])
        first, breaks = setup[name]
        pct = 100 * STEP_FLOP / (ms / 1e3) / 1e9 / peak
        print(f"| {name} | {ms:.2f} | {ms / base:.3f} | {pct:.0f} | {first:.1f} | {breaks} |")


if __name__ == "__main__":
    main(sys.argv[1:])
