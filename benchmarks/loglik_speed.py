"""Throughput of ``log_likelihood`` at K = 5000 on the seed network against a batched torch loop.

Methods, interleaved in one process (median of ``--repeats``), on real binarized MNIST test
images: ``ppl_vae.log_likelihood`` on ``vae.model``/``vae.guide``; a hand-written batched
PyTorch reference for the same network (encode once, sample K z, decode, logsumexp); pythae
0.1.2's ``get_nll`` on the same network when pythae is installed. Peak memory (max RSS) of each
method is measured in a fresh subprocess. Usage::

    python benchmarks/loglik_speed.py --k 5000 --n-images 20
"""

from __future__ import annotations

import argparse
import gzip
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ppl_vae import build_vae
from ppl_vae.estimators import log_likelihood

MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist/t10k-images-idx3-ubyte.gz"


def load_images(n: int, seed: int = 0) -> torch.Tensor:
    """The first ``n`` MNIST test images, flattened and binarized (threshold 0.5): ``(n, 784)``."""
    with gzip.open(MNIST, "rb") as f:
        data = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
    return torch.from_numpy((data[:n] > 127).astype(np.float32))


def reference(vae, x: torch.Tensor, k: int) -> torch.Tensor:
    """Batched torch IWAE estimate per image: one image at a time, K particles in one batch."""
    out = []
    with torch.no_grad():
        for xi in x:
            loc, log_var = vae.encoder.net(xi[None]).chunk(2, -1)  # (1, z)
            scale = torch.exp(0.5 * log_var)
            eps = torch.randn(k, loc.shape[-1])
            z = loc + scale * eps  # (K, z)
            logits = vae.decoder.net(z)  # (K, 784)
            log_px_z = -F.binary_cross_entropy_with_logits(
                logits, xi.expand_as(logits), reduction="none"
            ).sum(-1)
            log_pz = -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
            log_qz = (
                -0.5 * (eps**2).sum(-1)
                - scale.log().sum(-1)
                - 0.5 * z.shape[-1] * math.log(2 * math.pi)
            )
            out.append(torch.logsumexp(log_px_z + log_pz - log_qz, 0) - math.log(k))
    return torch.stack(out)


def ours(vae, x: torch.Tensor, k: int) -> torch.Tensor:
    return log_likelihood(vae.model, vae.guide, x, num_samples=k)


def pythae_model(vae):
    """The same networks wrapped as a pythae VAE, or None if pythae is not installed."""
    try:
        from pythae.models import VAE as PVAE
        from pythae.models import VAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder
    except ImportError:
        return None

    class Enc(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = vae.encoder.net

        def forward(self, x):
            loc, log_var = self.net(x.reshape(x.shape[0], -1)).chunk(2, -1)
            return ModelOutput(embedding=loc, log_covariance=log_var)

    class Dec(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = vae.decoder.net

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).reshape(-1, 1, 28, 28))

    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=50, reconstruction_loss="bce")
    return PVAE(config, encoder=Enc(), decoder=Dec()).eval()


def run_pythae(model, x: torch.Tensor, k: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.tensor(model.get_nll(x.reshape(-1, 1, 28, 28), n_samples=k, batch_size=k))


def make_vae():
    torch.manual_seed(0)
    return build_vae(784).eval()


def memory_only(method: str, k: int, n: int) -> None:
    vae, x = make_vae(), load_images(n)
    fn = {"ppl_vae": ours, "reference": reference}.get(method)
    if method == "pythae":
        model = pythae_model(vae)
        run_pythae(model, x, k)
    else:
        fn(vae, x, k)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--n-images", type=int, default=20)
    p.add_argument("--pythae-images", type=int, default=4, help="images for get_nll (slow)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory-only", choices=["ppl_vae", "reference", "pythae"])
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.memory_only:
        memory_only(a.memory_only, a.k, a.n_images)
        return 0

    vae, x = make_vae(), load_images(a.n_images)
    pmodel = pythae_model(vae)
    xp = x[: a.pythae_images]
    methods = {"reference (batched torch)": lambda: reference(vae, x, a.k)}
    methods["ppl_vae.log_likelihood"] = lambda: ours(vae, x, a.k)
    sizes = {"reference (batched torch)": len(x), "ppl_vae.log_likelihood": len(x)}
    if pmodel is not None:
        methods["pythae get_nll"] = lambda: run_pythae(pmodel, xp, a.k)
        sizes["pythae get_nll"] = len(xp)
    else:
        print("pythae is not installed: get_nll skipped (pip install pythae==0.1.2 --no-deps)")
    times: dict[str, list[float]] = {m: [] for m in methods}
    results = {}
    ours(vae, x[:2], 100)  # warm-up
    for _ in range(a.repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append((time.perf_counter() - t0) / sizes[name] * 1e3)
    ms = {m: statistics.median(t) for m, t in times.items()}
    ref = ms["reference (batched torch)"]
    mem = {}
    for name, key in [
        ("reference (batched torch)", "reference"),
        ("ppl_vae.log_likelihood", "ppl_vae"),
        ("pythae get_nll", "pythae"),
    ]:
        if name in methods:
            cmd = [sys.executable, __file__, "--memory-only", key, "--k", str(a.k)]
            cmd += ["--n-images", str(sizes[name]), "--threads", str(a.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            mem[name] = float(out.stdout.strip().splitlines()[-1])
    print(f"\nK = {a.k}, {a.n_images} MNIST test images (pythae: {len(xp)}), seed network,")
    print(f"random weights, {a.threads} threads, median of {a.repeats}\n")
    print("| method | ms per image | ratio to reference | peak RSS (MiB) | mean log p(x) |")
    print("|---|---|---|---|---|")
    for name in methods:
        value = results[name]
        mean = float(value) if value.dim() == 0 else float(value.mean())
        print(
            f"| {name} | {ms[name]:.1f} | {ms[name] / ref:.2f} | {mem.get(name, math.nan):.0f} "
            f"| {mean:.2f} |"
        )
    if "pythae get_nll" in ms:
        speedup = ms["pythae get_nll"] / ms["ppl_vae.log_likelihood"]
        print(f"\nppl_vae is {speedup:.2f}x faster than pythae get_nll per image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
