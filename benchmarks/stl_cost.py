"""What STL's replay of a guide with several latent sites costs a training step.

With two stochastic layers, STL scores each guide site on the guide replayed with its draws
detached (``ppl_vae.STLELBO``), so that q(z2|z1)'s score is taken at a fixed z1 and the path
through z1 is kept. Before, each site was scored on its live distribution, which also
cancelled that path term (still unbiased, but no longer zero-variance at the exact posterior).
This times one eager step (loss and backward) of both on the same model and batch,
interleaved, and prints the medians and their ratio; the one-layer seed network, where
nothing is replayed, is the control (ratio 1 up to noise).

Usage: ``python benchmarks/stl_cost.py [--threads 2] [--repeats 7] [--steps 20]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

from ppl_vae import STLELBO, build_vae  # noqa: E402


class LiveParentSTL(STLELBO):
    """The earlier STL: every site scored on its live distribution, no replay."""

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        self._frozen_guide = lambda: guide_trace  # score the live trace itself
        return super()._differentiable_loss_particle(model_trace, guide_trace)


def step_ms(vae, objective, x: torch.Tensor, steps: int) -> float:
    """Milliseconds per loss-and-backward, averaged over ``steps``."""
    params = list(vae.parameters())
    started = time.perf_counter()
    for _ in range(steps):
        loss = objective.differentiable_loss(vae.model, vae.guide, x)
        for g in torch.autograd.grad(loss, params, allow_unused=True):
            del g
    return 1000 * (time.perf_counter() - started) / steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((100, 784), 0.13))
    models = {
        "one layer, seed net (control)": build_vae(x_dim=784),
        "two layers, seed widths, flow prior on z2": build_vae(
            x_dim=784, z_dim=50, top_z_dim=50, top_hidden=(100, 100), prior="flow"
        ),
    }
    print(f"batch 100, eager step, median of {args.repeats} x {args.steps} steps")
    print(f"{args.threads} threads, CPU {cpu_model()}")
    print("| model | STL, replayed guide (ms) | earlier STL, no replay (ms) | ratio |")
    print("|---|---|---|---|")
    for name, vae in models.items():
        new, old = STLELBO(), LiveParentSTL()
        step_ms(vae, new, x, 3), step_ms(vae, old, x, 3)  # warm up
        times: dict[str, list[float]] = {"new": [], "old": []}
        for _ in range(args.repeats):
            times["new"].append(step_ms(vae, new, x, args.steps))
            times["old"].append(step_ms(vae, old, x, args.steps))
        a, b = statistics.median(times["new"]), statistics.median(times["old"])
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.3f} |")


if __name__ == "__main__":
    main()
