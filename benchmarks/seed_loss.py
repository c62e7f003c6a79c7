"""What the seed experiment's "loss 84.57 (train) / 82.74 (validation)" can have been.

The seed reports only the network (784-300-300-50, softplus, sigmoid output), the optimizer
(Adam, batch 100) and the budget (30 epochs). This script trains exactly that, written by hand
in PyTorch (analytic KL, one draw per image, lr 1e-3), on the 50,000 / 10,000 split of the
60,000 MNIST training images, once per way of feeding the pixels:

- ``grey``: the grey levels in [0, 1] as the targets of the binary cross-entropy (what
  PyTorch's and Keras's VAE examples do; not a likelihood of binary data);
- ``threshold``: pixels > 0.5 set to 1;
- ``dynamic``: a fresh Bernoulli draw of every pixel in every epoch (validation drawn once).

For each it prints, after the last epoch, the candidate definitions of "the loss": the
negative ELBO per image (reconstruction + KL), the reconstruction term alone, and per pixel,
for the running training average over the epoch (what a training loop prints) and for one
pass over the validation split. A candidate is the seed's definition only if both its train
and validation numbers match.

Usage: ``nice python benchmarks/seed_loss.py [--epochs 30] [--data-dir ../shared/data/mnist]``
(about 2 minutes per variant on 2 cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _peers import vae_terms  # benchmarks/ is on sys.path
from torch import nn

from ppl_vae import build_vae
from ppl_vae.data.datasets import load_dataset
from ppl_vae.data.splits import binarize
from ppl_vae.models.reference import plain_copy

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared/data/mnist"


def seed_network() -> nn.Module:
    """784-300-300-50 softplus with a Bernoulli output, as a user writes it (``nn.Softplus``)."""
    return plain_copy(build_vae(784, z_dim=50, hidden=(300, 300), activation="softplus"))


def train(how: str, args: argparse.Namespace) -> dict[str, float]:
    data = load_dataset("mnist", data_dir=args.data_dir, binarization="none", val_size=10000)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    mode = {"grey": "none"}.get(how, how)  # grey levels are the targets as they are
    val = binarize(data.val, mode, gen)
    model = seed_network()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = len(data.train)
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        x_all = binarize(data.train, mode, gen)
        order = torch.randperm(n, generator=gen)
        sums = torch.zeros(2)
        for i in range(0, n, 100):
            x = x_all[order[i : i + 100]]
            recon, kl = vae_terms(model, x)
            loss = (recon + kl).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.stack([recon.sum(), kl.sum()]).detach()
        with torch.no_grad():
            v_recon, v_kl = vae_terms(model, val)
        train_recon, train_kl = (sums / n).tolist()
        print(
            f"{how:9s} epoch {epoch:2d}: train -ELBO {train_recon + train_kl:7.2f} "
            f"(recon {train_recon:6.2f}), val -ELBO {(v_recon + v_kl).mean():7.2f} "
            f"(recon {v_recon.mean():6.2f})  {time.perf_counter() - started:.1f} s",
            flush=True,
        )
    return {
        "train -ELBO per image": train_recon + train_kl,
        "val -ELBO per image": float((v_recon + v_kl).mean()),
        "train reconstruction per image": train_recon,
        "val reconstruction per image": float(v_recon.mean()),
        "train -ELBO per pixel": (train_recon + train_kl) / 784,
        "val -ELBO per pixel": float((v_recon + v_kl).mean()) / 784,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--data-dir", default=str(MNIST_DIR))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", default=["grey", "threshold", "dynamic"])
    args = p.parse_args()
    results = {how: train(how, args) for how in args.variants}
    print(f"\nafter {args.epochs} epochs (the seed reports 84.57 train / 82.74 validation):")
    print("| quantity | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for key in next(iter(results.values())):
        print(f"| {key} | " + " | ".join(f"{r[key]:.3f}" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
