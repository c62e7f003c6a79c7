"""What Pyro's argument and support checks cost a training epoch, and what fit saves by
skipping them after the first full epoch over in-memory rows.

For each objective, the seed network trains ``--epochs`` epochs on ``--rows`` dynamically
binarized MNIST rows (batch 100) twice from the same weights and seed: as ``fit`` runs by
default (checks in epoch 1, none after), and with the checks forced on in every epoch (what
fit did before). Both runs give the same losses and weights (``tests/test_core.py``); this
prints the median seconds of epochs 2 on, from fit's own per-epoch timing, and the ratio.

Usage: ``python benchmarks/validation_cost.py [--threads 2] [--epochs 4] [--rows 10000]``
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, mnist_or_smoke  # noqa: E402

from ppl_vae import build_vae, fit  # noqa: E402
from ppl_vae.training import epoch  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--data-dir", default="../shared/data/mnist")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = mnist_or_smoke(args.data_dir)
    data = dataclasses.replace(data, train=data.train[: args.rows], val=None)
    torch.manual_seed(0)
    base = build_vae(784)
    default_rule = epoch.checks_skippable
    print(f"{cpu_model()}, {args.threads} threads, torch {torch.__version__}")
    print(f"seed network, {args.rows} rows, batch 100; median s of epochs 2 to {args.epochs}")
    print("| objective | checks every epoch | fit (checks in epoch 1) | ratio |")
    print("|---|---|---|---|")
    for objective in ("mean-field", "stl"):
        seconds = {}
        for name, rule in (("checked", lambda state, feed: False), ("fit", default_rule)):
            epoch.checks_skippable = rule
            try:
                result = fit_copy(base, data, args.epochs, objective)
            finally:
                epoch.checks_skippable = default_rule
            seconds[name] = statistics.median(h["seconds"] for h in result.history[1:])
        print(
            f"| {objective} | {seconds['checked']:.2f} | {seconds['fit']:.2f} | "
            f"{seconds['fit'] / seconds['checked']:.3f} |"
        )


def fit_copy(base, data, epochs: int, objective: str):
    torch.manual_seed(1)
    return fit(
        copy.deepcopy(base), data, epochs=epochs, objective=objective, warmup=0, progress=False
    )


if __name__ == "__main__":
    main(sys.argv[1:])
