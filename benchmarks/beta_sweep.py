"""The beta-VAE on sprites: what a larger KL weight does to the bound, its terms, the mutual
information between points and codes, and disentanglement (MIG against the five factors).

Each beta trains the same network from the same initial weights; the test split is scored
with the plain ELBO (beta = 1), its reconstruction and KL terms, ELBO surgery, active units
and MIG. Prints one markdown table.

    python benchmarks/beta_sweep.py [--betas 1,2,4,8] [--epochs 30] [--seeds 0]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import pyro
import torch
from _machine import cpu_model  # benchmarks/ is on sys.path when a script runs

from ppl_vae import build_vae, elbo, fit
from ppl_vae.data.datasets import load_dataset
from ppl_vae.evaluation.analysis import active_units, elbo_surgery, mutual_information_gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--betas", default="1,2,4,8")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--z-dim", type=int, default=10)
    parser.add_argument("--hidden", default="256,256")
    args = parser.parse_args()
    pyro.enable_validation(False)
    data = load_dataset("sprites", binarization="none")
    x, factors = data.test, data.test_labels
    hidden = tuple(int(h) for h in args.hidden.split(","))
    print(
        f"sprites: {len(data.train)} train / {len(data.test)} test; network "
        f"1024-{'-'.join(map(str, hidden))}-{args.z_dim}, Bernoulli; {args.epochs} epochs; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu_model()}"
    )
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        torch.manual_seed(seed)
        base = build_vae(1024, z_dim=args.z_dim, hidden=hidden)
        for beta in (float(b) for b in args.betas.split(",")):
            vae = copy.deepcopy(base)
            started = time.perf_counter()
            fit(vae, data, epochs=args.epochs, beta=beta, seed=seed, progress=False)
            seconds = time.perf_counter() - started
            torch.manual_seed(seed)
            bound = elbo(vae.model, vae.guide, x, num_samples=10).mean().item()
            s = elbo_surgery(vae, x, num_samples=len(x), seed=seed)
            count, _ = active_units(vae, x)
            mig, _ = mutual_information_gap(vae.encode(x).mean, factors)
            rows.append((beta, seed, bound, s, count, mig, seconds))
    print(
        "\n| beta | seed | test ELBO | reconstruction | average KL | marginal KL "
        "| I(n; z) (log N) | active units | MIG | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for beta, seed, bound, s, count, mig, seconds in rows:
        print(
            f"| {beta:g} | {seed} | {bound:.2f} | {bound + s.average_kl:.2f} | "
            f"{s.average_kl:.2f} | {s.marginal_kl:.2f} | {s.mutual_information:.2f} "
            f"+- {s.mutual_information_se:.2f} ({s.log_n:.2f}) | {count} | {mig:.3f} | "
            f"{seconds:.0f} |"
        )
    by_beta: dict[float, list[float]] = {}
    for beta, _, _, _, _, mig, _ in rows:
        by_beta.setdefault(beta, []).append(mig)
    print("\nmean MIG per beta:", {b: round(statistics.mean(m), 3) for b, m in by_beta.items()})


if __name__ == "__main__":
    main()
