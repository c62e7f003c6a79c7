"""``ppl-vae report`` (RUN_DIR/report.md) and ``compare`` (log p(x) of two runs, paired)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from ppl_vae.cli.evaluate import evaluate, load_for_eval, look_inside
from ppl_vae.evaluation.loglik import log_likelihood
from ppl_vae.evaluation.pictures import interleave, plot_curves, plot_latents, save_image_grid
from ppl_vae.evaluation.walks import INTERPOLATIONS, interpolation_rows, traversal_rows

__all__ = ["cmd_compare", "cmd_report"]


def cmd_report(args: argparse.Namespace) -> int:
    """``RUN_DIR/report.md``: settings, log p(x) and its diagnostics, the ELBO and its
    terms, surgery, active units, MIG where the data have factors, and every picture."""
    run, data, x = load_for_eval(args)
    if args.limit:
        x = x[: args.limit]
    folder = Path(args.run_dir)
    torch.manual_seed(args.seed)
    metrics = evaluate(run.program, x, args.num_samples, False, args.seed)
    labels = getattr(data, f"{args.split}_labels")
    labels = labels[: len(x)] if labels is not None else None
    metrics.update(look_inside(run.program, x, labels))
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
    if reconstruct is not None and len(x):
        nrow = min(10, len(x))  # a test split of fewer than ten images makes one short row
        n = min(len(x), 50) // nrow * nrow
        grid = interleave(x[:n], reconstruct(x[:n]), nrow)
        path = save_image_grid(
            grid, shape, folder / "reconstructions.png", nrow, "reconstructions"
        )
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


def cmd_compare(args: argparse.Namespace) -> int:
    """The paired per-point difference of log p(x) between two runs, on the same points and
    with the same draws (common random numbers)."""
    loaded = []
    for run_dir in (args.run_a, args.run_b):  # both are checked before anything is estimated
        run, data, x = load_for_eval(argparse.Namespace(**{**vars(args), "run_dir": run_dir}))
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
