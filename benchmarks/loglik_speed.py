"""Throughput of ``log_likelihood`` at K = 5000 on the seed network against a batched torch loop.

Methods, interleaved in one process (median of ``--repeats``), on real binarized MNIST test
images: ``ppl_vae.log_likelihood`` on ``vae.model``/``vae.guide``; a hand-written batched
PyTorch reference for the same network (encode once, sample K z, decode, logsumexp); pythae
0.1.2's ``get_nll`` on the same network when pythae is installed, with its default batching
(``batch_size=100``: it re-encodes the image for every batch) and with ``batch_size=K``. Peak
memory is measured per method in a fresh subprocess: the largest anonymous resident memory
sampled during the call minus its value just before, with glibc's malloc returning every large
block to the system when it is freed (``MALLOC_MMAP_THRESHOLD_``), so that it follows live
tensors.
``--full`` also runs ``log_likelihood`` with diagnostics on all 10,000 test images in a
subprocess and reports its time and peak memory, to show that memory does not grow with the
number of images. Usage::

    python benchmarks/loglik_speed.py --k 5000 --n-images 20 [--full]
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import _peers  # benchmarks/ is on sys.path
import numpy as np
import torch
import torch.nn.functional as F
from _machine import cpu_model, loglik_flop, matmul_peak

from ppl_vae import build_vae
from ppl_vae.evaluation.loglik import log_likelihood
from ppl_vae.models.reference import plain_copy

MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist/t10k-images-idx3-ubyte.gz"


def load_images(n: int, seed: int = 0) -> torch.Tensor:
    """The first ``n`` MNIST test images, flattened and binarized (threshold 0.5): ``(n, 784)``."""
    with gzip.open(MNIST, "rb") as f:
        data = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
    return torch.from_numpy((data[:n] > 127).astype(np.float32))


def plain_nets(vae) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The VAE's encoder and decoder networks as a user writes them, with ``nn.Softplus``
    (ppl_vae's own networks use ``ppl_vae.runtime.Softplus``)."""
    plain = plain_copy(vae)
    return plain.encoder.net, plain.decoder.net


def reference(nets, x: torch.Tensor, k: int, eps: torch.Tensor | None = None) -> torch.Tensor:
    """Batched torch IWAE estimate per image: one image at a time, K particles in one batch,
    the Bernoulli log-likelihood by ``binary_cross_entropy_with_logits``. ``eps``: the
    standard Normal draws, shape (N, K, z), else drawn here."""
    encoder, decoder = nets
    out = []
    with torch.no_grad():
        for n, xi in enumerate(x):
            loc, log_var = encoder(xi[None]).chunk(2, -1)  # (1, z)
            scale = torch.exp(0.5 * log_var)
            e = torch.randn(k, loc.shape[-1]) if eps is None else eps[n].to(loc.dtype)
            z = loc + scale * e  # (K, z)
            logits = decoder(z)  # (K, 784)
            log_px_z = -F.binary_cross_entropy_with_logits(
                logits, xi.expand_as(logits), reduction="none"
            ).sum(-1)
            log_pz = -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
            log_qz = (
                -0.5 * (e**2).sum(-1)
                - scale.log().sum(-1)
                - 0.5 * z.shape[-1] * math.log(2 * math.pi)
            )
            out.append(torch.logsumexp(log_px_z + log_pz - log_qz, 0) - math.log(k))
    return torch.stack(out)


def ours(vae, x: torch.Tensor, k: int, compile: bool = False) -> torch.Tensor:
    """``log_likelihood``, eager or with its compiled kernels (what ``compile=None`` picks
    from 1,000 images at K = 5000 on, e.g. the whole test set)."""
    return log_likelihood(vae.model, vae.guide, x, num_samples=k, compile=compile)


def pythae_model(vae):
    """The same networks wrapped as a pythae VAE (``_peers``), or None if pythae is absent."""
    model = _peers.pythae_model("vae", vae)
    return None if model is None else model.eval()


def run_pythae(model, x: torch.Tensor, k: int, batch_size: int = 100) -> torch.Tensor:
    with torch.no_grad():
        return torch.tensor(model.get_nll(x, n_samples=k, batch_size=batch_size))


def anon_rss_mib() -> float:
    """This process's anonymous resident memory (heap and tensors, not library code), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class PeakSampler(threading.Thread):
    """Samples :func:`anon_rss_mib` every 2 ms; ``peak`` is the largest value."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.done = anon_rss_mib(), threading.Event()

    def run(self) -> None:
        while not self.done.wait(2e-3):
            self.peak = max(self.peak, anon_rss_mib())


def make_vae():
    torch.manual_seed(0)
    return build_vae(784).eval()


def memory_only(method: str, k: int, n: int) -> None:
    """Print the seconds and the peak memory above the baseline (MiB) of one method's call.

    Memory is anonymous resident memory (``RssAnon``: heap and tensors; not library code, whose
    pages the kernel drops and faults back in at will), sampled every 2 ms during the call,
    minus its value after the same method has run once on one image with 64 particles.
    """
    vae, x = make_vae(), load_images(n)

    def call(xs: torch.Tensor, kk: int) -> None:
        if method in ("ppl_vae", "ppl_vae-compiled"):
            ours(vae, xs, kk, compile=method == "ppl_vae-compiled")
        elif method == "ppl_vae-diagnostics":
            log_likelihood(
                vae.model, vae.guide, xs, num_samples=kk, diagnostics=True, progress=len(xs) > 1000
            )
        elif method == "reference":
            reference(plain_nets(vae), xs, kk)
        else:
            batch = kk if method == "pythae-k" else min(kk, 100)
            run_pythae(pythae_model(vae), xs, kk, batch)

    call(x[:1], 64)  # 64 >= 21 particles: the diagnostics import arviz here, not below
    base = anon_rss_mib()
    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    call(x, k)
    seconds = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    print(f"{seconds:.3f} {max(sampler.peak, anon_rss_mib()) - base:.1f}")


def measure(key: str, k: int, n: int, threads: int) -> tuple[float, float]:
    """(seconds, peak MiB above baseline) of one method in a fresh process."""
    cmd = [sys.executable, __file__, "--memory-only", key, "--k", str(k)]
    cmd += ["--n-images", str(n), "--threads", str(threads)]
    # glibc otherwise raises its mmap threshold after the first large free and keeps freed
    # blocks in the heap, so the resident set would track fragmentation, not live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**16)}
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=env)
    seconds, mib = out.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(mib)


def full_table(k: int, n_images: int, threads: int) -> None:
    """Time and peak memory of log_likelihood with diagnostics on n_images and on 10,000."""
    print(f"\nlog_likelihood(diagnostics=True), K = {k}, {threads} threads, fresh process each:")
    print("| test images | seconds | ms per image | peak memory (MiB) |")
    print("|---|---|---|---|")
    for n in (n_images, 10_000):
        seconds, mib = measure("ppl_vae-diagnostics", k, n, threads)
        print(f"| {n} | {seconds:.1f} | {seconds / n * 1e3:.1f} | {mib:.0f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--n-images", type=int, default=20)
    p.add_argument("--pythae-images", type=int, default=4, help="images for get_nll (slow)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--full", action="store_true", help="also all 10,000 test images")
    p.add_argument("--full-only", action="store_true", help="only the --full table")
    p.add_argument(
        "--memory-only",
        choices=[
            "ppl_vae",
            "ppl_vae-compiled",
            "ppl_vae-diagnostics",
            "reference",
            "pythae",
            "pythae-k",
        ],
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.memory_only:
        memory_only(a.memory_only, a.k, a.n_images)
        return 0

    if a.full_only:
        full_table(a.k, a.n_images, a.threads)
        return 0
    vae, x = make_vae(), load_images(a.n_images)
    pmodel = pythae_model(vae)
    xp = x[: a.pythae_images]
    nets = plain_nets(vae)
    methods = {"reference (batched torch)": lambda: reference(nets, x, a.k)}
    methods["ppl_vae.log_likelihood"] = lambda: ours(vae, x, a.k)
    compiled = "ppl_vae.log_likelihood(compile=True)"
    methods[compiled] = lambda: ours(vae, x, a.k, compile=True)
    sizes = {
        "reference (batched torch)": len(x),
        "ppl_vae.log_likelihood": len(x),
        compiled: len(x),
    }
    if pmodel is not None:
        methods["pythae get_nll (default batch_size=100)"] = lambda: run_pythae(pmodel, xp, a.k)
        methods["pythae get_nll (batch_size=K)"] = lambda: run_pythae(pmodel, xp, a.k, a.k)
        sizes["pythae get_nll (default batch_size=100)"] = len(xp)
        sizes["pythae get_nll (batch_size=K)"] = len(xp)
    else:
        print("pythae is not installed: get_nll skipped (pip install pythae==0.1.2 --no-deps)")
    times: dict[str, list[float]] = {m: [] for m in methods}
    results = {}
    ours(vae, x[:2], 100)  # warm-up
    ours(vae, x[:2], 100, compile=True)  # and the kernels built
    for _ in range(a.repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append((time.perf_counter() - t0) / sizes[name] * 1e3)
    ms = {m: statistics.median(t) for m, t in times.items()}
    ref = ms["reference (batched torch)"]
    keys = {
        "reference (batched torch)": "reference",
        "ppl_vae.log_likelihood": "ppl_vae",
        compiled: "ppl_vae-compiled",
        "pythae get_nll (default batch_size=100)": "pythae",
        "pythae get_nll (batch_size=K)": "pythae-k",
    }
    mem = {name: measure(keys[name], a.k, sizes[name], a.threads)[1] for name in methods}
    print(f"\nK = {a.k}, {a.n_images} MNIST test images (pythae: {len(xp)}), seed network,")
    print(f"random weights, {a.threads} threads, median of {a.repeats}; CPU {cpu_model()}\n")
    print("| method | ms per image | ratio to reference | peak memory (MiB) | mean log p(x) |")
    print("|---|---|---|---|---|")
    for name in methods:
        value = results[name]
        mean = float(value) if value.dim() == 0 else float(value.mean())
        print(f"| {name} | {ms[name]:.1f} | {ms[name] / ref:.2f} | {mem[name]:.0f} | {mean:.2f} |")
    ours_ms = ms["ppl_vae.log_likelihood"]
    # the fast float32 operations against float64 ones, on the same draws
    eps = torch.randn(len(x), a.k, 50, dtype=torch.float64)
    fast32 = reference((vae.encoder.net, vae.decoder.net), x, a.k, eps)
    plain64 = reference(tuple(n.double() for n in plain_nets(vae)), x.double(), a.k, eps)
    print(
        "fast float32 network and likelihood against plain float64, same draws: largest "
        f"per-image difference {(fast32.double() - plain64).abs().max().item():.2e} nats"
    )
    pair = [
        log_likelihood(vae.model, vae.guide, x, num_samples=a.k, seed=1, compile=c)
        for c in (False, True)
    ]
    print(
        "compiled kernels against eager ones, same draws: largest per-image difference "
        f"{(pair[0] - pair[1]).abs().max().item():.2e} nats"
    )
    peak, flop = matmul_peak(), loglik_flop(a.k)
    print(f"float32 1024-square matrix product: {peak:.0f} GFLOP/s ({a.threads} threads)")
    for name in ("ppl_vae.log_likelihood", compiled):
        rate = flop / ms[name] / 1e6
        print(f"{name}'s decoder products: {rate:.0f} GFLOP/s = {100 * rate / peak:.0f}% of it")
    for name in methods:
        if name.startswith("pythae"):
            print(f"ppl_vae is {ms[name] / ours_ms:.2f}x faster than {name}")
    if a.full:
        full_table(a.k, a.n_images, a.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
