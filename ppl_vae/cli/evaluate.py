"""``ppl-vae evaluate``, and what each command on a run folder shares: load it, log p(x)."""

from __future__ import annotations

import argparse
import json
import math

import torch

from ppl_vae.cli.runs import Run, check_features, load_data, open_run, read_config, run_device
from ppl_vae.data.splits import DataSplits
from ppl_vae.evaluation.analysis import active_units, elbo_surgery, mutual_information_gap
from ppl_vae.evaluation.bits import bits_per_dim
from ppl_vae.evaluation.loglik import elbo as elbo_per_point
from ppl_vae.evaluation.loglik import log_likelihood
from ppl_vae.objectives.analytic import _latent_names
from ppl_vae.program import Program, check_observed, observation_levels, traces
from ppl_vae.runtime.distributed import world
from ppl_vae.training.batching import check_finite

__all__ = ["cmd_evaluate", "evaluate", "load_for_eval", "look_inside"]


def load_for_eval(args: argparse.Namespace) -> tuple[Run, DataSplits, torch.Tensor]:
    """The run's program with its weights, its data, and the split asked for."""
    doc = read_config(args.run_dir)
    device = run_device(args.device, doc)
    spec = doc.get("data")
    if args.dataset is not None:
        base = spec or {"binarization": "none", "seed": 0}
        spec = {**base, "dataset": args.dataset, "data_dir": args.data_dir or base.get("data_dir")}
    if spec is None:
        raise ValueError(
            f"{args.run_dir} does not record its data (fit was given tensors); name it with "
            "--dataset (and --data-dir)"
        )
    data = load_data(spec)
    x = getattr(data, args.split).to(device)
    name = f"the {spec['dataset']} {args.split} split"
    run = open_run(args.run_dir, example=x[:2], device=str(x.device))
    known = run.program.dtype_and_device()
    if known is not None:  # the weights' dtype (float64 when trained so)
        x = x.to(dtype=known[0])
    check_features(run, x, name)
    check_finite((x,), name)
    check_observed(run.program.model, run.program.guide, x, what=name)
    return run, data, x


def evaluate(
    program: Program, x: torch.Tensor, num_samples: int, progress: bool, seed: int
) -> dict[str, float]:
    """log p(x) with diagnostics, and the ELBO, averaged over the rows of ``x``; the draws
    follow from ``seed`` alone, and under torchrun the points are shared out among the
    processes (each gets every result)."""
    result = log_likelihood(
        program.model,
        program.guide,
        x,
        num_samples=num_samples,
        diagnostics=True,
        progress=progress,
        seed=seed,
        distributed=True,
    )
    summary = result.summary()
    spread = result.log_px.std().item() if len(x) > 1 else math.nan
    bound = elbo_per_point(
        program.model, program.guide, x, num_samples=1, seed=seed, distributed=True
    )
    bound = bound.mean().item()
    bits, basis = _bits(program, x, summary["log_px"])
    return {
        "log_likelihood": summary["log_px"],
        "nll": summary["nll"],
        "bits_per_dim": bits,
        "bits_per_dim_basis": basis,
        # two different errors: the Monte Carlo error of the estimate (the delta method, too
        # small where Pareto k > 0.7), and how much the mean would move on other test points
        "stderr": summary["stderr_of_mean"],
        "spread": spread,
        "stderr_points": spread / math.sqrt(len(x)),
        "elbo": bound,
        "ess_fraction": summary["ess_fraction"],
        "pareto_k_mean": summary["pareto_k"],
        "share_pareto_k_above_0.7": summary["share_k_above_0.7"],
        "num_samples": num_samples,
        "num_points": len(x),
    }


def _bits(program: Program, x: torch.Tensor, log_px: float) -> tuple[float, str]:
    """Mean log p(x) in bits per dimension, and what it counts: a log-probability as it stands
    where the likelihood is a mass (Bernoulli, the discretized heads); for a density, plus the
    8 bits of the 256-level bins where the data are 8-bit, else the density's own value."""
    levels = observation_levels(program.model, program.guide, x[:2])
    d = x[0].numel()
    if levels is not None:
        return bits_per_dim(log_px, d), f"probability on {levels} levels"
    scaled = x * 255
    if bool(((x >= 0) & (x <= 1)).all()) and bool(((scaled - scaled.round()).abs() < 1e-3).all()):
        return bits_per_dim(log_px, d, math.log2(256)), "density of 8-bit data, + 8 bits"
    return bits_per_dim(log_px, d), "density (data not on 256 levels: no discretization term)"


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``ppl-vae evaluate``: log p(x), its diagnostics and a look inside, as a table or JSON."""
    run, data, x = load_for_eval(args)
    if args.limit:
        x = x[: args.limit]
    torch.manual_seed(args.seed)
    metrics = evaluate(run.program, x, args.num_samples, not args.json, args.seed)
    if not world().root:
        return 0
    metrics = {"dataset": data.name, "split": args.split, **metrics}
    labels = getattr(data, f"{args.split}_labels")
    if labels is not None and args.limit:
        labels = labels[: args.limit]
    metrics.update(look_inside(run.program, x, labels))
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text}")
    return 0


def _surgery_applies(program: Program, x: torch.Tensor) -> bool:
    """ELBO surgery splits the KL of one latent site ``z``, scoring ``encode``'s q at every
    other point's code: not for several latent layers, nor for a guide whose density there
    costs many network passes (a flow guide)."""
    model_trace, _ = traces(program.model, program.guide, (x[:2],), {})
    q = program.hook("encode")(x[:2])
    return _latent_names(model_trace) == ["z"] and not getattr(q, "costly_rescoring", False)


@torch.no_grad()
def look_inside(
    program: Program, x: torch.Tensor, labels: torch.Tensor | None
) -> dict[str, float]:
    """Active units, ELBO surgery and, with factor labels (N, K), MIG, where the program has
    ``encode`` and two points or more (a variance needs two); nothing otherwise."""
    if program.hook("encode") is None or len(x) < 2:
        return {}
    count, _ = active_units(program, x)
    out: dict[str, float] = {"active_units": count}
    if _surgery_applies(program, x):
        surgery = elbo_surgery(program, x, num_samples=min(1000, len(x)))
        out.update(
            average_kl=surgery.average_kl,
            marginal_kl=surgery.marginal_kl,
            mutual_information=surgery.mutual_information,
            mutual_information_se=surgery.mutual_information_se,
            log_n=surgery.log_n,
        )
    if labels is not None and labels.dim() == 2 and labels.shape[1] > 0:
        codes = program.hook("encode")(x).mean
        if codes.shape[1] >= 2 and all(len(c.unique()) > 1 for c in labels.T):
            out["mig"], _ = mutual_information_gap(codes.cpu(), labels.cpu())
    return out
