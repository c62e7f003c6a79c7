"""The ``ppl-vae`` command: train, evaluate, sample, reconstruct, interpolate, traverse,
latents."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ppl_vae.cli.runs import (
    RunConfig,
    check_device,
    check_features,
    choose_binarization,
    load_data,
    open_run,
    read_config,
    run_device,
)
from ppl_vae.data.splits import binarize_splits
from ppl_vae.evaluation.analysis import active_units, elbo_surgery, mutual_information_gap
from ppl_vae.evaluation.loglik import elbo as elbo_per_point
from ppl_vae.evaluation.loglik import log_likelihood
from ppl_vae.evaluation.pictures import interleave, plot_curves, plot_latents, save_image_grid
from ppl_vae.evaluation.walks import (
    INTERPOLATIONS,
    attribute_rows,
    interpolation_rows,
    traversal_rows,
)
from ppl_vae.models.build import build_program
from ppl_vae.objectives.analytic import _latent_names
from ppl_vae.program import ProgramError, check_observed, traces
from ppl_vae.runtime.distributed import init_from_env, launched, leave, world
from ppl_vae.training.batching import check_finite
from ppl_vae.training.checkpoint import CheckpointError
from ppl_vae.training.config import RESUMABLE, FitConfig, check_config
from ppl_vae.training.signals import Terminated
from ppl_vae.training.trackers import make as make_trackers
from ppl_vae.training.trainer import fit

__all__ = ["main"]


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of a config dataclass, ``--field-name``, with the field's help."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "") + " (default: %(default)s)"
        if f.type in ("bool", bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_
            )
            continue
        kind = {
            "int": int,
            "float": float,
            "int | None": int,
            "float | None": float,
            "str | None": str,
        }.get(str(f.type), str)
        choices = f.metadata.get("choices")
        parser.add_argument(flag, type=kind, default=f.default, choices=choices, help=help_)


def _pick(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _evaluate(
    program, x: torch.Tensor, num_samples: int, progress: bool, seed: int
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
    return {
        "log_likelihood": summary["log_px"],
        "nll": summary["nll"],
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
    n = min(len(x), 50) // nrow * nrow
    if reconstruct is not None and n:
        pairs = interleave(x[:n], reconstruct(x[:n]), nrow)
        written.append(
            save_image_grid(
                pairs,
                image_shape,
                out / "reconstructions.png",
                nrow,
                "test digits (odd rows) and reconstructions (even rows)",
            )
        )
    missing = [m for m, fn in (("sample", sample), ("reconstruct", reconstruct)) if fn is None]
    if missing:
        print(f"no pictures from {', '.join(m + '()' for m in missing)}: {program.name} lacks it")
    return written


def _say(*args: Any, **kwargs: Any) -> None:
    """print, from one process: rank 0 of a torchrun launch, or the only one."""
    if world().root:
        print(*args, **kwargs)


def _cmd_train(args: argparse.Namespace) -> int:
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
        network = ("likelihood", "gaussian_scale", "learn_scale", "preset", "hidden", "z_dim")
        network += ("activation", "prior", "components", "pseudo_inputs", "flow_layers")
        network += ("flow_type", "modes", "guide", "guide_flow_layers", "guide_direction")
        ignored = [
            "--" + f.name.replace("_", "-")
            for f in dataclasses.fields(RunConfig)
            if f.name in network and getattr(run, f.name) != f.default
        ]
        if ignored:
            _say(f"note: {', '.join(ignored)} describe the built-in network; --model replaces it")
    raw = load_data(dataclasses.replace(run, binarize="none"), seed=fit_config.seed)
    program = build_program(run.recipe(raw.x_dim), raw.x_dim)
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
    test = _evaluate(program, test_x, run.eval_samples, fit_config.progress, fit_config.seed)
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
    print(
        f"test log p(x) = {test['log_likelihood']:.2f} nats, Monte Carlo error "
        f"+- {test['stderr']:.2f}, over the {test['num_points']} test points "
        f"+- {test['stderr_points']:.2f} (ELBO {test['elbo']:.2f}); {pareto}"
    )
    print(
        f"wrote {out / 'metrics.json'}, {out / 'checkpoint.pt'}, "
        + ", ".join(str(p) for p in pictures)
    )
    return 0


def _load_for_eval(args: argparse.Namespace):
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


def _cmd_evaluate(args: argparse.Namespace) -> int:
    run, data, x = _load_for_eval(args)
    if args.limit:
        x = x[: args.limit]
    torch.manual_seed(args.seed)
    metrics = _evaluate(run.program, x, args.num_samples, not args.json, args.seed)
    if not world().root:
        return 0
    metrics = {"dataset": data.name, "split": args.split, **metrics}
    labels = getattr(data, f"{args.split}_labels")
    if labels is not None and args.limit:
        labels = labels[: args.limit]
    metrics.update(_look_inside(run.program, x, labels))
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text}")
    return 0


def _surgery_applies(program, x: torch.Tensor) -> bool:
    """ELBO surgery splits the KL of one latent site ``z``, scoring ``encode``'s q at every
    other point's code: not for several latent layers, nor for a guide whose density there
    costs many network passes (a flow guide)."""
    model_trace, _ = traces(program.model, program.guide, (x[:2],), {})
    q = program.hook("encode")(x[:2])
    return _latent_names(model_trace) == ["z"] and not getattr(q, "costly_rescoring", False)


@torch.no_grad()
def _look_inside(program, x: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
    """Active units, ELBO surgery and, with factor labels (N, K), MIG, where the program has
    ``encode``; nothing otherwise."""
    if program.hook("encode") is None:
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


def _load_images(args: argparse.Namespace):
    """What every picture command starts from: the run, its data (images, else an error),
    the split's rows, the PNG to write, and each ``--row``-like flag checked against them."""
    run, data, x = _load_for_eval(args)
    if data.image_shape is None:
        raise ValueError(f"{data.name} is not image data; there is nothing to draw")
    for flag in ("row", "source", "target"):
        i = getattr(args, flag, None)
        if flag != "row" and args.command != "interpolate":
            continue  # --from-label/--to-label are labels, not rows
        if i is not None and not 0 <= i < len(x):
            name = "--row takes" if flag == "row" else "--from/--to take"
            raise ValueError(f"{name} rows 0 to {len(x) - 1} of the split, got {i}")
    return run, data, x, Path(args.output or Path(args.run_dir) / f"{args.command}.png")


@torch.no_grad()
def _cmd_pictures(args: argparse.Namespace) -> int:
    run, data, x, out = _load_images(args)
    torch.manual_seed(args.seed)
    what = f"ppl-vae {args.command}"
    if args.command == "sample":
        images = run.program.require("sample", what)(args.n)
        title = "samples: mean of p(x|z), z ~ p(z)"
    else:
        n = max(10, args.n // 10 * 10)
        reconstruct = run.program.require("reconstruct", what)
        images = interleave(x[:n], reconstruct(x[:n]), 10)
        title = f"{args.split} digits (odd rows) and reconstructions (even rows)"
    save_image_grid(images, data.image_shape, out, 10, title)
    print(f"wrote {out}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad flags are one line on stderr and exit 2, not the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _count(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


@torch.no_grad()
def _cmd_walk(args: argparse.Namespace) -> int:
    """``interpolate`` and ``traverse``: pictures of walks in latent space."""
    run, data, x, out = _load_images(args)
    if args.command == "interpolate":
        kinds = INTERPOLATIONS if args.kind == "both" else (args.kind,)
        rows = [
            interpolation_rows(run.program, x[args.source], x[args.target], args.steps, kind)
            for kind in kinds
        ]
        images, nrow = torch.cat(rows), args.steps
        title = (
            f"{args.split} rows {args.source} -> {args.target}: "
            + ", ".join(kinds)
            + " (one row each)"
        )
    elif args.command == "attribute":
        labels = getattr(data, f"{args.split}_labels")
        if labels is None:
            raise ValueError(f"{data.name} has no labels; attribute vectors need labelled data")
        if labels.dim() == 2:
            labels = labels[:, args.factor]
        images = attribute_rows(
            run.program, x[args.row], x, labels, args.source, args.target, args.steps
        )
        nrow = args.steps
        title = (
            f"row {args.row} (label {int(labels[args.row])}) plus t times the step from the mean "
            f"code of label {args.source} to that of label {args.target}, t = 0 to 1"
        )
    else:
        values = [float(v) for v in args.values.split(",")]
        images, order = traversal_rows(run.program, x[args.row], x, values, args.dims)
        nrow = len(values)
        title = f"row {args.row}: z_d set to {values}, rows: dimensions {order}"
    save_image_grid(images, data.image_shape, out, nrow, title)
    print(f"wrote {out}")
    return 0


@torch.no_grad()
def _cmd_latents(args: argparse.Namespace) -> int:
    """The split's latent means in the plane, coloured by label."""
    run, data, x = _load_for_eval(args)
    encode = run.program.require("encode", "ppl-vae latents")
    labels = getattr(data, f"{args.split}_labels")
    if labels is not None and labels.dim() == 2:  # factors: colour by the one asked for
        labels = labels[:, args.factor]
    out = Path(args.output or Path(args.run_dir) / "latents.png")
    title = f"{data.name} {args.split}: means of q(z|x)"
    plot_latents(encode(x).mean, labels, out, title)
    print(f"wrote {out}")
    return 0


@torch.no_grad()
def _report_pictures(
    run, data, x: torch.Tensor, labels: torch.Tensor | None, folder: Path
) -> list[tuple[str, Path]]:
    """Every picture the program's methods allow, as (caption, path) pairs."""
    if data.image_shape is None:
        return []
    program, shape, out = run.program, data.image_shape, []
    sample, reconstruct = program.hook("sample"), program.hook("reconstruct")
    encode, decode = program.hook("encode"), program.hook("decode")
    if sample is not None:
        path = save_image_grid(sample(100), shape, folder / "samples.png", 10, "samples")
        out.append(("Samples: means of p(x|z), z ~ p(z)", path))
    if reconstruct is not None:
        n = min(len(x), 50) // 10 * 10
        grid = interleave(x[:n], reconstruct(x[:n]), 10)
        path = save_image_grid(grid, shape, folder / "reconstructions.png", 10, "reconstructions")
        out.append(("Test points (odd rows) and their reconstructions (even rows)", path))
    if encode is not None and decode is not None and len(x) > 1:
        rows = torch.cat([interpolation_rows(program, x[0], x[1], 10, k) for k in INTERPOLATIONS])
        path = save_image_grid(rows, shape, folder / "interpolate.png", 10, "linear, spherical")
        out.append(("Test points 0 to 1: linear (top) and spherical interpolation", path))
        rows, order = traversal_rows(program, x[0], x, (-3, -2, -1, 0, 1, 2, 3), dims=10)
        path = save_image_grid(rows, shape, folder / "traverse.png", 7, f"dimensions {order}")
        dims = ", ".join(map(str, order))
        out.append(
            (f"Traversals of test point 0, z_d from -3 to 3; rows: dimensions {dims}", path)
        )
        if labels is not None and labels.dim() == 2:
            labels = labels[:, 0]
        plot_latents(encode(x).mean, labels, folder / "latents.png", "test latent means")
        out.append(
            ("Latent means of the test points (PCA beyond two dimensions)", folder / "latents.png")
        )
    return out


def _cmd_compare(args: argparse.Namespace) -> int:
    """The paired per-point difference of log p(x) between two runs, on the same points and
    with the same draws (common random numbers)."""
    loaded = []
    for run_dir in (args.run_a, args.run_b):  # both are checked before anything is estimated
        run, data, x = _load_for_eval(argparse.Namespace(**{**vars(args), "run_dir": run_dir}))
        loaded.append((run, (data.spec or {}).get("dataset", data.name), x[: args.limit or None]))
    (_, name_a, x_a), (_, name_b, x_b) = loaded
    if x_a.shape != x_b.shape or not torch.equal(x_a, x_b.to(x_a)):
        # pairing needs the very same points: same data set, binarization and its seed
        raise ValueError(
            f"the {args.split} points of {args.run_a} ({name_a}, {len(x_a)}) and {args.run_b} "
            f"({name_b}, {len(x_b)}) differ; compare runs on the same data (or give both "
            "--dataset)"
        )
    per_point = [
        log_likelihood(run.program.model, run.program.guide, x, num_samples=args.num_samples,
                       diagnostics=True, seed=args.seed, progress=not args.json)
        for run, _, x in loaded
    ]  # fmt: skip
    a, b = per_point
    lp_a, lp_b = a.log_px.double(), b.log_px.double()
    diff, n = lp_a - lp_b, len(lp_a)
    out = {
        "split": args.split,
        "num_points": n,
        "num_samples": args.num_samples,
        "log_likelihood_a": lp_a.mean().item(),
        "log_likelihood_b": lp_b.mean().item(),
        "difference": diff.mean().item(),
        # the paired standard error: the spread of the per-point differences, not of each run
        "stderr_paired": (diff.std() / math.sqrt(n)).item() if n > 1 else math.nan,
        "stderr_unpaired": math.sqrt((lp_a.var() + lp_b.var()).item() / n) if n > 1 else math.nan,
        "monte_carlo_error": (a.stderr.double().pow(2) + b.stderr.double().pow(2))
        .sum()
        .sqrt()
        .item()
        / n,
        "share_a_better": (diff > 0).double().mean().item(),
        "share_pareto_k_above_0.7_a": (a.pareto_k > 0.7).double().mean().item(),
        "share_pareto_k_above_0.7_b": (b.pareto_k > 0.7).double().mean().item(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"log p(x) on {n} {args.split} points, K = {args.num_samples}: A {args.run_a} "
        f"{out['log_likelihood_a']:.3f}, B {args.run_b} {out['log_likelihood_b']:.3f}"
    )
    print(
        f"A - B = {out['difference']:.3f} +- {out['stderr_paired']:.3f} nats (paired standard "
        f"error over the points; unpaired it would be +- {out['stderr_unpaired']:.3f}; Monte "
        f"Carlo error +- {out['monte_carlo_error']:.3f}); A is better on "
        f"{100 * out['share_a_better']:.1f}% of the points"
    )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """``RUN_DIR/report.md``: settings, log p(x) and its diagnostics, the ELBO and its
    terms, surgery, active units, MIG where the data have factors, and every picture."""
    run, data, x = _load_for_eval(args)
    if args.limit:
        x = x[: args.limit]
    folder = Path(args.run_dir)
    torch.manual_seed(args.seed)
    metrics = _evaluate(run.program, x, args.num_samples, False, args.seed)
    labels = getattr(data, f"{args.split}_labels")
    labels = labels[: len(x)] if labels is not None else None
    metrics.update(_look_inside(run.program, x, labels))
    pictures = _report_pictures(run, data, x, labels, folder)
    history = run.info.get("history") or []
    metrics_log = folder / "metrics.jsonl"
    if metrics_log.is_file():
        history = [json.loads(line) for line in metrics_log.read_text().splitlines() if line]
    if history:
        plot_curves(history, folder / "curves.png")
        pictures.append(("Training and validation loss per epoch", folder / "curves.png"))
    lines = [f"# Run {folder.name}", ""]
    lines += ["## Settings", "", "| | |", "|---|---|"]
    for section in ("program", "data", "fit"):
        value = run.info.get(section)
        lines.append(f"| {section} | `{json.dumps(value)}` |")
    lines += ["", f"## log p(x) on the {data.name} {args.split} split", ""]
    lines += ["| measure | value |", "|---|---|"]
    for key, value in metrics.items():
        lines.append(
            f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
        )
    if "average_kl" in metrics:
        lines += [
            "",
            f"ELBO surgery: the average KL ({metrics['average_kl']:.3f} nats) is the marginal "
            f"KL from the aggregated posterior to the prior ({metrics['marginal_kl']:.3f}) plus "
            f"the mutual information between a point and its code "
            f"({metrics['mutual_information']:.3f} +- {metrics['mutual_information_se']:.3f}), "
            f"which is at most log N = {metrics['log_n']:.3f}. The ELBO "
            f"({metrics['elbo']:.3f}) is the reconstruction term "
            f"({metrics['elbo'] + metrics['average_kl']:.3f}) minus the average KL (the two "
            "estimated with independent draws).",
        ]
    lines += ["", "## Pictures", ""]
    for caption, path in pictures:
        if path.is_file():
            lines += [f"**{caption}**", "", f"![{caption}]({path.name})", ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines) + "\n")
    print(f"wrote {report} and {len(pictures)} pictures")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``ppl-vae`` argument parser."""
    parser = _Parser(
        prog="ppl-vae",
        description="Variational autoencoders as Pyro programs: train, evaluate log p(x), draw.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, not one line"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser(
        "train",
        help="train a VAE, estimate test log p(x), draw pictures",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument("--out", default="runs/demo", help="run folder to write")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUT where it stopped; only "
        + ", ".join("--" + k.replace("_", "-") for k in RESUMABLE)
        + " may differ from its settings",
    )
    train.add_argument(
        "--overwrite", action="store_true", help="replace the run that OUT holds, if any"
    )
    _add_dataclass_flags(train, RunConfig)
    _add_dataclass_flags(train, FitConfig)

    def run_dir_parser(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("run_dir", help="a folder written by `ppl-vae train --out`")
        p.add_argument(
            "--split",
            default="test",
            choices=("train", "val", "test"),
            help="which split of the run's dataset (default: %(default)s)",
        )
        p.add_argument(
            "--dataset",
            default=None,
            help="evaluate on another dataset than the run's (same features)",
        )
        p.add_argument("--data-dir", default=None, help="folder with that dataset's files")
        p.add_argument("--device", default=None, help="torch device (default: the run's)")
        p.add_argument("--seed", type=int, default=0, help="seed of the draws")
        return p

    ev = run_dir_parser("evaluate", "importance-sampled log p(x) with diagnostics")
    ev.add_argument(
        "--num-samples",
        type=_count(1),
        default=1000,
        help="importance samples K per data point (default: %(default)s)",
    )
    ev.add_argument("--limit", type=_count(0), default=0, help="only the first N points (0: all)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    for name, help_ in (
        ("sample", "a PNG grid of samples from the model"),
        ("reconstruct", "a PNG grid of data and reconstructions"),
    ):
        p = run_dir_parser(name, help_)
        p.add_argument("--n", type=_count(1), default=100, help="images (default: %(default)s)")
        p.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/NAME.png)")
    interp = run_dir_parser("interpolate", "decode points between two inputs' latent means")
    interp.add_argument("--from", dest="source", type=_count(0), default=0, help="first row")
    interp.add_argument("--to", dest="target", type=_count(0), default=1, help="last row")
    interp.add_argument("--steps", type=_count(2), default=10, help="points, endpoints included")
    interp.add_argument(
        "--kind", choices=(*INTERPOLATIONS, "both"), default="both", help="path between them"
    )
    interp.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/NAME.png)")
    trav = run_dir_parser("traverse", "vary one latent dimension at a time, decoded")
    trav.add_argument("--row", type=_count(0), default=0, help="the input whose code is varied")
    trav.add_argument("--dims", type=_count(1), default=None, help="most-used dimensions shown")
    trav.add_argument(
        "--values", default="-3,-2,-1,0,1,2,3", help="values for each z_d (write --values=-2,0,2)"
    )
    trav.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/NAME.png)")
    attr = run_dir_parser("attribute", "add the direction between two label groups' codes")
    attr.add_argument("--row", type=_count(0), default=0, help="the input to change")
    attr.add_argument("--from-label", dest="source", type=int, required=True, help="e.g. 3")
    attr.add_argument("--to-label", dest="target", type=int, required=True, help="e.g. 8")
    attr.add_argument("--factor", type=_count(0), default=0, help="label column (factor data)")
    attr.add_argument("--steps", type=_count(2), default=8, help="images from t = 0 to 1")
    attr.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/NAME.png)")
    cmp = sub.add_parser("compare", help="paired difference of log p(x) between two runs")
    cmp.add_argument("run_a", help="a run folder")
    cmp.add_argument("run_b", help="another run folder, trained on the same data")
    cmp.add_argument("--split", default="test", choices=("train", "val", "test"))
    cmp.add_argument("--dataset", default=None, help="evaluate both on another dataset")
    cmp.add_argument("--data-dir", default=None, help="folder with that dataset's files")
    cmp.add_argument("--device", default=None, help="torch device (default: each run's)")
    cmp.add_argument("--seed", type=int, default=0, help="seed of the draws, shared by both")
    cmp.add_argument("--num-samples", type=_count(1), default=1000, help="K per data point")
    cmp.add_argument("--limit", type=_count(0), default=0, help="only the first N points (0: all)")
    cmp.add_argument("--json", action="store_true", help="print one JSON object")
    rep = run_dir_parser("report", "write RUN_DIR/report.md with every number and picture")
    rep.add_argument("--num-samples", type=_count(1), default=1000, help="K for log p(x)")
    rep.add_argument("--limit", type=_count(0), default=0, help="only the first N points (0: all)")
    lat = run_dir_parser("latents", "the latent means of a split in 2-D, coloured by label")
    lat.add_argument("--factor", type=_count(0), default=0, help="label column (factor data)")
    lat.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/latents.png)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ppl-vae`` with ``argv`` (default: the command line); returns the exit code."""
    args = build_parser().parse_args(argv)
    commands = {
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
        "sample": _cmd_pictures,
        "reconstruct": _cmd_pictures,
        "interpolate": _cmd_walk,
        "traverse": _cmd_walk,
        "latents": _cmd_latents,
        "attribute": _cmd_walk,
        "report": _cmd_report,
        "compare": _cmd_compare,
    }
    if threading.current_thread() is threading.main_thread():
        # SIGTERM as Ctrl-C everywhere (fit holds both until its step ends): exit 143
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        if launched():
            _join(args)
        return commands[args.command](args)
    except Exception as e:
        if args.debug:
            raise
        code = 1 if isinstance(e, FloatingPointError) else 2
        known = (ValueError, OSError, CheckpointError, ProgramError, FloatingPointError)
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not isinstance(e, known):
            code, text = 1, f"{type(e).__name__}: {text} (--debug shows where)"
        rank = f" (process {world().rank})" if world().active else ""
        print(f"ppl-vae {args.command}: error{rank}: {text}", file=sys.stderr)
        return code
    except KeyboardInterrupt as e:
        saved = (
            "; the checkpoint is saved (resume with --resume)" if args.command == "train" else ""
        )
        terminated = isinstance(e, Terminated)
        if world().root:
            print(f"{'terminated' if terminated else 'interrupted'}{saved}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
        leave()


def _join(args: argparse.Namespace) -> None:
    """Under torchrun: join the process group (gloo on CPU, NCCL on CUDA), each process on
    its own GPU when the device is ``cuda`` without an index."""
    if args.command not in ("train", "evaluate"):
        raise ValueError(
            f"ppl-vae {args.command} runs in one process; run it without torchrun (only train "
            "and evaluate share their work among processes)"
        )
    if args.command == "train":
        device = check_device(args.device)
    else:
        device = run_device(args.device, read_config(args.run_dir))
    _, device = init_from_env(device)
    args.device = str(device)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated
