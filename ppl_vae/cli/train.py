"""``ppl-vae train``: build the program, fit it, estimate test log p(x), write the run folder."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from ppl_vae.cli.evaluate import evaluate
from ppl_vae.cli.runs import RunConfig, choose_binarization, load_data
from ppl_vae.data.splits import binarize_splits
from ppl_vae.evaluation.pictures import interleave, plot_curves, save_image_grid
from ppl_vae.models.build import build_program
from ppl_vae.runtime.distributed import world
from ppl_vae.training.config import FitConfig, check_config
from ppl_vae.training.trackers import make as make_trackers
from ppl_vae.training.trainer import fit

__all__ = ["cmd_train"]


def _pick(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _say(*args: Any, **kwargs: Any) -> None:
    """print, from one process: rank 0 of a torchrun launch, or the only one."""
    if world().root:
        print(*args, **kwargs)


def cmd_train(args: argparse.Namespace) -> int:
    """``ppl-vae train``: fit, estimate test log p(x), write metrics, checkpoint, pictures."""
    run, fit_config = _pick(RunConfig, args), _pick(FitConfig, args)
    run.check()
    check_config(fit_config)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    warmup = fit_config.warmup
    if warmup is not None and warmup >= fit_config.epochs > 0 and warmup > 0:
        _say(
            f"note: --warmup {fit_config.warmup:g} is not shorter than --epochs "
            f"{fit_config.epochs}, so the KL weight never reaches --beta {fit_config.beta:g} and "
            "the run ends on a down-weighted KL (raise --epochs)"
        )
    torch.manual_seed(fit_config.seed)
    if run.model is not None:
        network = ("likelihood", "gaussian_scale", "learn_scale", "logistics", "preset", "hidden")
        network += ("z_dim",)
        network += ("activation", "prior", "components", "pseudo_inputs", "flow_layers")
        network += ("flow_type", "modes", "guide", "guide_flow_layers", "guide_direction")
        network += ("net", "channels")
        ignored = [
            "--" + f.name.replace("_", "-")
            for f in dataclasses.fields(RunConfig)
            if f.name in network and getattr(run, f.name) != f.default
        ]
        if ignored:
            _say(f"note: {', '.join(ignored)} describe the built-in network; --model replaces it")
    raw = load_data(dataclasses.replace(run, binarize="none"), seed=fit_config.seed)
    run = run.resolved(raw.image_shape)
    program = build_program(run.recipe(raw.x_dim, raw.image_shape), raw.x_dim)
    for _, module in program.modules():
        module.to(run.device)
    binarization = choose_binarization(run.binarize, program, raw.test[:2].to(run.device))
    data = binarize_splits(raw, binarization, fit_config.seed)
    run = dataclasses.replace(run, binarize=binarization)
    n_params = sum(p.numel() for _, m in program.modules() for p in m.parameters())
    processes = f" over {world().size} processes" if world().active else ""
    _say(
        f"{data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test "
        f"points of {data.x_dim} features (binarization: {binarization}); {program.name}"
        + (f" with {n_params:,} parameters" if n_params else "")
        + processes
    )
    started = time.perf_counter()
    trackers = make_trackers(run.logger) if world().root else []
    with contextlib.ExitStack() as stack:
        for tracker in trackers:
            stack.enter_context(tracker)
        return _train_and_evaluate(args, run, fit_config, program, data, out, trackers, started)


def _train_and_evaluate(args, run, fit_config, program, data, out, trackers, started) -> int:
    result = fit(
        program,
        data,
        config=fit_config,
        out=out,
        resume=args.resume,
        overwrite=args.overwrite,
        run_info={"run": dataclasses.asdict(run)},
        trackers=trackers,
    )
    seconds = time.perf_counter() - started
    if result.stopped_early and fit_config.progress:
        _say(f"early stop: no better validation loss for {fit_config.patience} epochs")
    _say(f"estimating test log p(x) with {run.eval_samples} importance samples per point...")
    test_x = data.test.to(run.device)
    test = evaluate(program, test_x, run.eval_samples, fit_config.progress, fit_config.seed)
    if not world().root:  # rank 0 writes the run folder
        return 0
    for tracker in trackers:
        tracker.log_final(result.steps, test)
    metrics = {
        "dataset": data.name,
        "test": test,
        "epochs": len(result.history),
        "train_seconds": seconds,
        "final": result.history[-1] if result.history else None,
        "step_mode": result.step_mode,  # eager, traced, compiled, or why eager (--compile)
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    pictures = []
    if data.image_shape is not None:
        pictures = _pictures(program, test_x, data.image_shape, out, fit_config.seed)
    plot_curves(result.history, out / "curves.png")
    pictures.append(out / "curves.png")
    share = test["share_pareto_k_above_0.7"]
    pareto = (
        f"Pareto k > 0.7 for {100 * share:.1f}% of points"
        + (", where the Monte Carlo error understates the real one" if share > 0 else "")
        if share == share
        else "no Pareto k below 21 samples (--eval-samples)"
    )
    bits = f" ({test['bits_per_dim']:.3f} bits/dim)" if data.image_shape is not None else ""
    print(
        f"test log p(x) = {test['log_likelihood']:.2f} nats{bits}, Monte Carlo error "
        f"+- {test['stderr']:.2f}, over the {test['num_points']} test points "
        f"+- {test['stderr_points']:.2f} (ELBO {test['elbo']:.2f}); {pareto}"
    )
    print(
        f"wrote {out / 'metrics.json'}, {out / 'checkpoint.pt'}, "
        + ", ".join(str(p) for p in pictures)
    )
    return 0


@torch.no_grad()
def _pictures(program, x: torch.Tensor, image_shape, out: Path, seed: int) -> list[Path]:
    """samples.png and reconstructions.png, each where the program has the method for it."""
    torch.manual_seed(seed)
    nrow, written = 10, []
    sample, reconstruct = program.hook("sample"), program.hook("reconstruct")
    if sample is not None:
        written.append(
            save_image_grid(
                sample(100),
                image_shape,
                out / "samples.png",
                nrow,
                "samples: mean of p(x|z), z ~ p(z)",
            )
        )
    nrow = min(nrow, len(x)) or nrow  # a test split of fewer than ten images: one short row
    n = min(len(x), 50) // nrow * nrow
    if reconstruct is not None and n:
        pairs = interleave(x[:n], reconstruct(x[:n]), nrow)
        written.append(
            save_image_grid(
                pairs,
                image_shape,
                out / "reconstructions.png",
                nrow,
                "test images (odd rows) and reconstructions (even rows)",
            )
        )
    missing = [m for m, fn in (("sample", sample), ("reconstruct", reconstruct)) if fn is None]
    if missing:
        print(f"no pictures from {', '.join(m + '()' for m in missing)}: {program.name} lacks it")
    return written
