"""The picture commands: sample, reconstruct, interpolate, traverse, attribute and latents."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ppl_vae.cli.evaluate import load_for_eval
from ppl_vae.evaluation.pictures import interleave, plot_latents, save_image_grid
from ppl_vae.evaluation.walks import (
    INTERPOLATIONS,
    attribute_rows,
    interpolation_rows,
    traversal_rows,
)

__all__ = ["cmd_latents", "cmd_pictures", "cmd_walk"]


def _load_images(args: argparse.Namespace):
    """What every picture command starts from: the run, its data (images, else an error),
    the split's rows, the PNG to write, and each ``--row``-like flag checked against them."""
    run, data, x = load_for_eval(args)
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
def cmd_pictures(args: argparse.Namespace) -> int:
    """``sample`` and ``reconstruct``: a PNG grid of ten columns."""
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


@torch.no_grad()
def cmd_walk(args: argparse.Namespace) -> int:
    """``interpolate``, ``traverse`` and ``attribute``: pictures of walks in latent space."""
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
def cmd_latents(args: argparse.Namespace) -> int:
    """The split's latent means in the plane, coloured by label."""
    run, data, x = load_for_eval(args)
    encode = run.program.require("encode", "ppl-vae latents")
    labels = getattr(data, f"{args.split}_labels")
    if labels is not None and labels.dim() == 2:  # factors: colour by the one asked for
        labels = labels[:, args.factor]
    out = Path(args.output or Path(args.run_dir) / "latents.png")
    title = f"{data.name} {args.split}: means of q(z|x)"
    plot_latents(encode(x).mean, labels, out, title)
    print(f"wrote {out}")
    return 0
