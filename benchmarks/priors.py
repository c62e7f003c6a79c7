"""Every prior on the same network, data and epoch budget; test log p(x) at K = 5000 and the KL.

Rows: the standard Normal prior trained three ways (``mean-field``: analytic KL;
``elbo``: Monte Carlo KL with ``Trace_ELBO``; ``stl``: Monte Carlo KL with the sticking-the-
landing gradient), then the learned priors (mixture, VampPrior, the three flows, the polymodal
latent), which have no closed-form KL: each is trained with ``--learned-objective`` (``stl`` by
default, the Monte Carlo KL's best gradient; ``elbo`` for plain ``Trace_ELBO``).

For each row and seed: ``fit`` on the training split (dynamically binarized) with a linear KL
warm-up (``FitConfig.warmup``: beta rises from 0 to 1 over the first ``--warmup`` epochs, then
stays 1; without it about one seed in three of this small network stays in posterior
collapse), then on the test split the importance-sampled log p(x) (K = ``--samples``), the
ELBO (``--elbo-samples`` draws) and the average KL(q(z|x) || p(z)). ``NLL`` is mean +-
standard error over test points; ``vs normal`` is the paired difference to the first row,
point by point (negative: better), with its paired standard error. The last lines say which
share of the Monte Carlo-KL gap (``elbo`` minus ``mean-field``) the STL gradient closes. Usage::

    nice -n 10 python benchmarks/priors.py                      # digits, about 5 minutes
    nice -n 10 python benchmarks/priors.py --dataset mnist --epochs 10 --z-dim 50 \\
        --hidden 300 300 --pseudo-inputs 500 --warmup 3 --test-limit 1000
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from torch import Tensor

from ppl_vae.data.datasets import DATASETS, load_dataset
from ppl_vae.evaluation.loglik import elbo as elbo_estimate
from ppl_vae.evaluation.loglik import log_likelihood
from ppl_vae.models.build import build_vae
from ppl_vae.models.polymodal import build_polymodal_vae
from ppl_vae.models.vae import VAE
from ppl_vae.training.config import FitConfig
from ppl_vae.training.trainer import fit

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared/data/mnist"


@dataclass
class Row:
    label: str
    prior: str
    objective: str
    options: dict[str, object] = field(default_factory=dict)


def rows(args: argparse.Namespace) -> list[Row]:
    out = [
        Row("normal, analytic KL", "normal", "mean-field"),
        Row("normal, MC KL (Trace_ELBO)", "normal", "elbo"),
        Row("normal, MC KL (STL)", "normal", "stl"),
    ]
    obj = args.learned_objective
    out.append(
        Row(f"mixture C={args.components}, {obj}", "mixture", obj, {"components": args.components})
    )
    out.append(
        Row(
            f"vamp K={args.pseudo_inputs}, {obj}",
            "vamp",
            obj,
            {"pseudo_inputs": args.pseudo_inputs},
        )
    )
    for t in ("affine-coupling", "spline-coupling", "maf"):
        opts = {"flow_type": t, "flow_layers": args.flow_layers}
        out.append(Row(f"flow {t} x{args.flow_layers}, {obj}", "flow", obj, opts))
    out.append(Row(f"polymodal N={args.modes}, {obj}", "polymodal", obj, {"modes": args.modes}))
    return [r for r in out if not args.only or r.prior in args.only]


def build(row: Row, x_dim: int, args: argparse.Namespace, train: Tensor) -> VAE:
    net = dict(z_dim=args.z_dim, hidden=tuple(args.hidden), activation=args.activation)
    if row.prior == "polymodal":
        return build_polymodal_vae(x_dim, **net, **row.options)
    opts = dict(row.options)
    if row.prior == "vamp":  # pseudo-inputs start at random training points
        idx = torch.randperm(len(train))[: args.pseudo_inputs]
        opts["pseudo_init"] = train[idx]
    return build_vae(x_dim, prior=row.prior, **net, **opts)


@torch.no_grad()
def average_kl(vae: VAE, x: Tensor, draws: int = 200) -> Tensor:
    """E_q[log q(z|x) - log p(z)] per point, shape ``(N,)``, with ``draws`` draws."""
    q = vae.encoder(x)
    z = q.sample((draws,))  # (S, N, z_dim)
    return (q.log_prob(z) - vae.prior().log_prob(z)).mean(0)


def run(row: Row, seed: int, data, args: argparse.Namespace) -> dict[str, Tensor | float]:
    pyro.clear_param_store()
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    vae = build(row, data.x_dim, args, data.train)
    cfg = FitConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        objective=row.objective,
        seed=seed,
        warmup=args.warmup,
        progress=False,
    )
    started = time.perf_counter()
    fit(vae, data, config=cfg)
    seconds = time.perf_counter() - started
    vae.eval()
    x = data.test[: args.test_limit]
    torch.manual_seed(10_000 + seed)
    log_px = log_likelihood(vae.model, vae.guide, x, num_samples=args.samples)
    bound = elbo_estimate(vae.model, vae.guide, x, num_samples=args.elbo_samples)
    kl = average_kl(vae, x)
    return {"nll": -log_px, "nelbo": -bound, "kl": kl, "seconds": seconds}


def _mean_se(v: Tensor) -> tuple[float, float]:
    return v.mean().item(), (v.std() / math.sqrt(len(v))).item()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--z-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    p.add_argument("--activation", default="softplus")
    p.add_argument("--components", type=int, default=10)
    p.add_argument("--pseudo-inputs", type=int, default=100)
    p.add_argument("--flow-layers", type=int, default=4)
    p.add_argument("--modes", type=int, default=3)
    p.add_argument("--samples", type=int, default=5000, help="K of the log p(x) estimate")
    p.add_argument("--elbo-samples", type=int, default=100)
    p.add_argument("--test-limit", type=int, help="score only the first N test points")
    p.add_argument("--warmup", type=int, default=50, help="KL warm-up epochs (0: none)")
    p.add_argument("--learned-objective", default="stl", choices=["stl", "elbo"])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on shared CPUs)")
    p.add_argument("--only", nargs="*", help="run only these priors, e.g. normal vamp")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    data_dir = MNIST_DIR if args.dataset == "mnist" else None
    data = load_dataset(args.dataset, data_dir=data_dir)
    print(
        f"dataset {args.dataset}: train {tuple(data.train.shape)}, test {tuple(data.test.shape)}; "
        f"net {data.x_dim}-{'-'.join(map(str, args.hidden))}-{args.z_dim} {args.activation}; "
        f"{args.epochs} epochs ({args.warmup} warm-up), batch {args.batch_size}, lr {args.lr}; "
        f"K={args.samples}; "
        f"seeds {args.seeds}\n"
    )
    results: dict[str, list[dict]] = {}
    for row in rows(args):
        results[row.label] = [run(row, s, data, args) for s in range(args.seeds)]
        r = results[row.label]
        nll = torch.stack([x["nll"] for x in r]).mean(0)
        print(f"  {row.label}: NLL {nll.mean():.3f} ({sum(x['seconds'] for x in r):.0f} s)")

    def per_point(label: str, key: str) -> Tensor:
        return torch.stack([x[key] for x in results[label]]).mean(0)  # (N,), seed-averaged

    base = next(iter(results))
    print(
        f"\n| prior / objective | test NLL (K={args.samples}) | vs {base} | -ELBO | avg KL "
        "| train s |"
    )
    print("|---|---|---|---|---|---|")
    for label in results:
        nll, se = _mean_se(per_point(label, "nll"))
        diff, dse = _mean_se(per_point(label, "nll") - per_point(base, "nll"))
        nelbo, _ = _mean_se(per_point(label, "nelbo"))
        kl, _ = _mean_se(per_point(label, "kl"))
        secs = sum(x["seconds"] for x in results[label]) / len(results[label])
        vs = "-" if label == base else f"{diff:+.3f} +- {dse:.3f}"
        print(f"| {label} | {nll:.3f} +- {se:.3f} | {vs} | {nelbo:.3f} | {kl:.3f} | {secs:.0f} |")

    labels = list(results)
    if {"normal, analytic KL", "normal, MC KL (Trace_ELBO)", "normal, MC KL (STL)"} <= set(labels):
        mf, mc, stl = (
            per_point(k, "nll").mean().item()
            for k in ("normal, analytic KL", "normal, MC KL (Trace_ELBO)", "normal, MC KL (STL)")
        )
        gap = mc - mf
        print(
            f"\nMC-KL gap (Trace_ELBO minus analytic KL): {gap:+.3f} nats; STL minus analytic KL: "
            f"{stl - mf:+.3f} nats"
            + (f"; STL closes {100 * (mc - stl) / gap:.0f}% of it" if abs(gap) > 1e-9 else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
