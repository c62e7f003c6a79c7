"""Milliseconds per optimisation step: ppl_vae.fit against a hand-written PyTorch VAE loop.

Every variant trains the seed network (784-300-300-50, softplus, Bernoulli) with batch 100 on
the same binarized MNIST rows, one epoch per measurement, the variants interleaved in one
process; the table shows the median over repeats and the ratio to plain PyTorch. Pyro's
validation is off, so the ``compile`` rows replay their graph from the first step of every
``fit`` call; the graph is traced (and compiled) once, in the warm-up, and each call checks
its first step against the eager one (one extra step in 100, counted in the times). With
``--quality`` it also trains ppl_vae and plain PyTorch for 10 epochs and compares test NLL.

A second table times the importance-weighted bound at ``--iwae-k`` particles (50 by default;
0 skips it) on the same network: ``fit`` with ``objective="iwae"`` and ``"iwae-dreg"``
(vectorized particles) against a hand-written batched PyTorch IWAE step and pythae 0.1.2's
IWAE model driven by its own ``BaseTrainer`` (when pythae is installed), on ``--iwae-rows``
rows, interleaved in one process. ``fit`` flushes subnormal floats to zero while it trains
(``denormals="flush"``); the hand-written step and pythae are timed both as users run them and
inside ``ppl_vae.runtime.flush_denormals``, so the table separates what the processor's mode
gives from what the code gives. Each variant keeps training across the repeats, and without
the flush a step slows down as training goes on (``benchmarks/denormals.py``).

    python benchmarks/train_speed.py [--data-dir ../shared/data/mnist] [--repeats 7] [--quality]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from _machine import DECODER_MACS, ENCODER_MACS, STEP_FLOP, cpu_model, matmul_peak, mnist_or_smoke
from _peers import pythae_model, train_pythae
from pyro.infer import SVI, TraceMeanField_ELBO

from ppl_vae import build_vae, fit
from ppl_vae.evaluation.loglik import log_likelihood
from ppl_vae.models.reference import plain_copy
from ppl_vae.runtime.kernels import FastBernoulli, flush_denormals


def plain_epoch(vae, opt, x, gen, batch_size=100):
    """The hand-written reference: the same network and loss, no Pyro (give it
    ``plain_copy(vae)``: nn.Softplus and the Bernoulli by binary_cross_entropy_with_logits,
    as a user writes them)."""
    perm = torch.randperm(len(x), generator=gen)
    for i in range(0, len(x), batch_size):
        xb = torch.bernoulli(x[perm[i : i + batch_size]], generator=gen)
        q = vae.encoder(xb)
        z = q.rsample()
        kl = torch.distributions.kl_divergence(q, vae.prior())
        loss = -(vae.decoder(z).log_prob(xb) - kl).sum() / len(xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def user_functions(vae, name="user"):
    """The seed network as a user writes it: two plain functions that register the networks
    with ``pyro.module`` (here the very modules of ``vae``, and its likelihood,
    ``ppl_vae.runtime.FastBernoulli``, so that the arithmetic is the same and the row
    measures fit's handling of a user's program; with Pyro's own ``dist.Bernoulli`` the row
    measured 1.07 and 1.10 times the built-in VAE, for the slower log-likelihood)."""
    encoder, decoder = vae.encoder, vae.decoder
    z_dim = vae.z_dim

    def model(x):
        pyro.module(f"{name}_decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(z_dim), 1.0).to_event(1))
            pyro.sample("x", FastBernoulli(logits=decoder.net(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module(f"{name}_encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", encoder(x))

    return model, guide


def plain_iwae_epoch(vae, opt, x, gen, k, batch_size=100):
    """A hand-written batched IWAE step (Burda et al. 2016), as a user writes it: encode once,
    K reparameterized draws per image, one decoder pass over the K x B codes, log-mean-exp."""
    perm = torch.randperm(len(x), generator=gen)
    normal = torch.distributions.Normal(0.0, 1.0)
    for i in range(0, len(x), batch_size):
        xb = torch.bernoulli(x[perm[i : i + batch_size]], generator=gen)
        loc, log_var = vae.encoder.net(xb).chunk(2, -1)
        std = torch.exp(0.5 * log_var)
        eps = torch.randn((k, *loc.shape))
        z = loc + std * eps  # (K, B, D)
        logits = vae.decoder.net(z)  # (K, B, 784)
        log_px = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, xb.expand_as(logits), reduction="none"
        ).sum(-1)
        log_w = log_px + normal.log_prob(z).sum(-1) - (normal.log_prob(eps) - std.log()).sum(-1)
        loss = -(torch.logsumexp(log_w, 0) - math.log(k)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def measure(variants, repeats, steps) -> dict[str, list[float]]:
    """ms per step of every variant (one epoch of ``steps`` steps per run), interleaved, after
    one warm-up run each."""
    times = {name: [] for name in variants}
    for run in variants.values():  # warm-up
        run()
    for _ in range(repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - started) / steps * 1e3)
    return times


def print_rows(times, ref_name, flop, peak, digits) -> None:
    """The table: median ms per step, ratio to ``ref_name`` and its range, GFLOP/s of
    ``flop`` per step, and the share of the matrix-product ``peak``."""
    ref = statistics.median(times[ref_name])
    print(
        "\n| variant | ms per step | ratio to plain PyTorch | range of ratios | GFLOP/s | "
        "% of peak |"
    )
    print("|---|---|---|---|---|---|")
    for name, ts in times.items():
        ratios = [t / r for t, r in zip(ts, times[ref_name], strict=True)]
        med = statistics.median(ts)
        rate = flop / med / 1e6
        print(
            f"| {name} | {med:.{digits}f} | {med / ref:.3f} | "
            f"{min(ratios):.2f}-{max(ratios):.2f} | {rate:.0f} | {100 * rate / peak:.0f} |"
        )


def iwae_table(base, data, x, k, repeats, peak) -> None:
    """The IWAE and DReG rows: ms per step against the hand-written batched IWAE step."""
    train_only = dataclasses.replace(data, train=x, val=None)  # dynamic binarization, no val
    plain_vae, flushed_vae = plain_copy(base), plain_copy(base)
    plain_opt = torch.optim.Adam(plain_vae.parameters(), lr=1e-3)
    flushed_opt = torch.optim.Adam(flushed_vae.parameters(), lr=1e-3)
    iwae_vae, dreg_vae = copy.deepcopy(base), copy.deepcopy(base)
    iwae_c, dreg_c = copy.deepcopy(base), copy.deepcopy(base)
    gens = {
        key: torch.Generator().manual_seed(0)
        for key in ("plain", "flushed", "pythae", "pythae flushed")
    }
    ref_name = f"plain PyTorch batched IWAE step (k={k})"

    def run_fit(vae, objective, **options):
        return lambda: fit(
            vae, train_only, epochs=1, objective=objective, particles=k, progress=False, **options
        )

    def flushed(run):
        def inside():
            with flush_denormals():
                run()

        return inside

    variants = {
        ref_name: lambda: plain_iwae_epoch(plain_vae, plain_opt, x, gens["plain"], k),
        "the same, inside flush_denormals": flushed(
            lambda: plain_iwae_epoch(flushed_vae, flushed_opt, x, gens["flushed"], k)
        ),
        f"ppl_vae.fit, objective='iwae' (k={k})": run_fit(iwae_vae, "iwae"),
        f"ppl_vae.fit, objective='iwae-dreg' (k={k})": run_fit(dreg_vae, "iwae-dreg"),
        f"ppl_vae.fit, objective='iwae' (k={k}), compile='compile'": run_fit(
            iwae_c, "iwae", compile="compile"
        ),
        f"ppl_vae.fit, objective='iwae-dreg' (k={k}), compile='compile'": run_fit(
            dreg_c, "iwae-dreg", compile="compile"
        ),
    }
    pmodel = pythae_model("iwae", plain_copy(base), k=k)
    if pmodel is not None:  # pythae's data are static within an epoch: a fresh draw per epoch
        pflushed = pythae_model("iwae", plain_copy(base), k=k)
        variants[f"pythae 0.1.2 IWAE, its BaseTrainer (k={k})"] = lambda: train_pythae(
            pmodel, torch.bernoulli(x, generator=gens["pythae"]), 1, dynamic=False, seed=8
        )
        variants["pythae, inside flush_denormals"] = flushed(
            lambda: train_pythae(
                pflushed,
                torch.bernoulli(x, generator=gens["pythae flushed"]),
                1,
                dynamic=False,
                seed=8,
            )
        )
    else:
        print("pythae is not installed: its row is skipped (pip install pythae==0.1.2 --no-deps)")
    times = measure(variants, repeats, steps=-(-len(x) // 100))
    flop = 2 * 3 * (ENCODER_MACS + k * DECODER_MACS) * 100
    print(
        f"\nIWAE, seed network, {len(x)} rows, batch 100, k = {k}: {flop / 1e9:.1f} GFLOP of "
        f"matrix products a step; median of {repeats}"
    )
    print_rows(times, ref_name, flop, peak, digits=1)


def svi_epoch(svi, x, gen, batch_size=100):
    """Bare Pyro: SVI + TraceMeanField_ELBO + pyro.optim.Adam, as Pyro's VAE example does."""
    perm = torch.randperm(len(x), generator=gen)
    for i in range(0, len(x), batch_size):
        svi.step(torch.bernoulli(x[perm[i : i + batch_size]], generator=gen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--rows", type=int, default=10_000, help="training rows per epoch")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--quality", action="store_true", help="also compare 10-epoch NLL")
    parser.add_argument("--iwae-k", type=int, default=50, help="IWAE table's k (0: skip it)")
    parser.add_argument("--iwae-rows", type=int, default=2000, help="rows per IWAE epoch")
    parser.add_argument("--only-iwae", action="store_true", help="only the IWAE table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    data = mnist_or_smoke(args.data_dir)
    x = data.train[: args.rows]
    train_only = dataclasses.replace(data, train=x, val=None)  # dynamic binarization, no val
    steps = -(-len(x) // 100)
    torch.manual_seed(0)
    base = build_vae(784)

    def clone():
        return copy.deepcopy(base)

    if args.only_iwae:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu_model()}")
        peak = matmul_peak()
        print(f"float32 1024-square matrix product: {peak:.0f} GFLOP/s")
        iwae_table(base, data, data.train[: args.iwae_rows], args.iwae_k, args.repeats, peak)
        return

    plain_vae, fast_vae, svi_fit_vae, default_vae = plain_copy(base), clone(), clone(), clone()
    traced_vae, compiled_vae, compiled_default_vae = clone(), clone(), clone()
    same = {"objective": "mean-field", "warmup": 0}  # the hand-written loop's computation
    svi_vae = plain_copy(base)  # Pyro's example as users write it: nn.Softplus, dist.Bernoulli
    user_model, user_guide = user_functions(clone())
    compiled_user = user_functions(clone(), "compiled_user")
    plain_opt = torch.optim.Adam(plain_vae.parameters(), lr=1e-3)
    svi = SVI(svi_vae.model, svi_vae.guide, pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())
    gens = {k: torch.Generator().manual_seed(0) for k in ("plain", "svi")}
    variants = {
        "plain PyTorch (hand-written loop)": lambda: plain_epoch(
            plain_vae, plain_opt, x, gens["plain"]
        ),
        "ppl_vae.fit (analytic-KL ELBO, fast engine)": lambda: fit(
            fast_vae, train_only, epochs=1, progress=False, **same
        ),
        "ppl_vae.fit defaults (STL, KL warm-up)": lambda: fit(
            default_vae, train_only, epochs=1, progress=False
        ),
        "ppl_vae.fit (analytic KL), compile='trace' (the graph replayed)": lambda: fit(
            traced_vae, train_only, epochs=1, progress=False, compile="trace", **same
        ),
        "ppl_vae.fit (analytic KL), compile='compile' (torch.compile)": lambda: fit(
            compiled_vae, train_only, epochs=1, progress=False, compile="compile", **same
        ),
        "ppl_vae.fit defaults, compile='compile' (auto's choice at 200+ steps an epoch)": (
            lambda: fit(
                compiled_default_vae, train_only, epochs=1, progress=False, compile="compile"
            )
        ),
        "ppl_vae.fit(model, guide) on user-written functions (pyro.module)": lambda: fit(
            user_model, user_guide, train_only, epochs=1, progress=False, **same
        ),
        "the same user-written functions, compile='compile'": lambda: fit(
            *compiled_user, train_only, epochs=1, progress=False, compile="compile", **same
        ),
        "ppl_vae.fit(engine='svi') (pyro.infer.SVI inside fit)": lambda: fit(
            svi_fit_vae, train_only, epochs=1, engine="svi", progress=False, **same
        ),
        "bare Pyro SVI + TraceMeanField_ELBO": lambda: svi_epoch(svi, x, gens["svi"]),
    }
    times = measure(variants, args.repeats, steps)
    print(
        f"\n{len(x)} rows, batch 100, {steps} steps per epoch, median of {args.repeats}; "
        f"torch {torch.__version__}, pyro {pyro.__version__}, {torch.get_num_threads()} threads, "
        f"CPU {cpu_model()}"
    )
    peak = matmul_peak()
    print(
        f"float32 1024-square matrix product: {peak:.0f} GFLOP/s; a step is "
        f"{STEP_FLOP / 1e6:.0f} MFLOP of matrix products"
    )
    print_rows(times, "plain PyTorch (hand-written loop)", STEP_FLOP, peak, digits=2)
    builtin = statistics.median(times["ppl_vae.fit (analytic-KL ELBO, fast engine)"])
    user = statistics.median(
        times["ppl_vae.fit(model, guide) on user-written functions (pyro.module)"]
    )
    print(f"\nuser-written functions / built-in VAE, both through fit: {user / builtin:.3f}")
    if args.iwae_k:
        iwae_table(base, data, data.train[: args.iwae_rows], args.iwae_k, args.repeats, peak)
    if args.quality:
        quality(data)


def quality(data) -> None:
    """10 epochs of each on the same rows; test NLL on 1,000 test images with K = 1000."""
    torch.manual_seed(1)
    base = build_vae(784)
    ours, plain = copy.deepcopy(base), plain_copy(base)
    torch.manual_seed(2)
    fit(ours, dataclasses.replace(data, val=None), epochs=10, progress=False)
    opt, gen = torch.optim.Adam(plain.parameters(), lr=1e-3), torch.Generator().manual_seed(2)
    for _ in range(10):
        plain_epoch(plain, opt, data.train, gen)
    test = data.test[:1000]
    print("\n| 10 epochs, seed network | test NLL (K=1000, 1,000 test images) |")
    print("|---|---|")
    for name, vae in (("plain PyTorch", plain), ("ppl_vae.fit", ours)):
        torch.manual_seed(3)
        nll = -log_likelihood(vae.model, vae.guide, test, num_samples=1000).mean().item()
        print(f"| {name} | {nll:.2f} |")


if __name__ == "__main__":
    main()
