"""Walks in latent space: interpolation between two inputs, traversals of single dimensions.

Both ask two methods of a program, by name: ``encode(x)`` (q(z|x) as a distribution, whose
mean is the embedding) and ``decode(z)`` (the mean of p(x|z), as rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ppl_vae.program import as_program

__all__ = [
    "INTERPOLATIONS",
    "attribute_rows",
    "interpolate",
    "interpolation_rows",
    "traversal_rows",
]


INTERPOLATIONS = ("linear", "spherical")


def interpolate(z0: Tensor, z1: Tensor, steps: int, kind: str = "linear") -> Tensor:
    """``steps`` points from ``z0`` to ``z1`` (both shape (D,)), endpoints included; (steps, D).

    ``linear``: :math:`(1 - t) z_0 + t z_1`. ``spherical`` (slerp, Shoemake 1985; White 2016
    for VAEs): along the great circle,

    .. math::

        \\frac{\\sin((1 - t)\\omega)}{\\sin \\omega} z_0
            + \\frac{\\sin(t \\omega)}{\\sin \\omega} z_1,
        \\qquad \\cos \\omega = \\frac{z_0 \\cdot z_1}{|z_0|\\,|z_1|},

    which keeps the norm when the endpoints share it: under a standard Normal prior in many
    dimensions, codes live near a sphere, and the linear midpoint of two of them falls inside
    it, where the prior put little mass. Nearly parallel endpoints fall back to linear.

    >>> interpolate(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 3, "spherical")
    tensor([[1.0000, 0.0000],
            [0.7071, 0.7071],
            [0.0000, 1.0000]])
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (the two endpoints), got {steps}")
    if kind not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {kind!r}; choose one of {list(INTERPOLATIONS)}")
    t = torch.linspace(0, 1, steps, dtype=z0.dtype, device=z0.device).unsqueeze(-1)  # (S, 1)
    if kind == "spherical":
        cos = torch.dot(z0, z1) / (z0.norm() * z1.norm()).clamp_min(1e-12)
        omega = torch.arccos(cos.clamp(-1.0, 1.0))
        if omega.abs() > 1e-4:
            s = torch.sin(omega)
            return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / s
    return (1 - t) * z0 + t * z1


@torch.no_grad()
def interpolation_rows(
    program: Any, x0: Tensor, x1: Tensor, steps: int = 10, kind: str = "linear"
) -> Tensor:
    """Decoded points between the latent means of two inputs (each shape (D_x,)); shape
    (steps, D_x). The first and last rows decode the two inputs' posterior means."""
    program = as_program(program)
    encode = program.require("encode", "interpolation")
    decode = program.require("decode", "interpolation")
    z = encode(torch.stack([x0, x1])).mean  # (2, D)
    return decode(interpolate(z[0], z[1], steps, kind))


@torch.no_grad()
def traversal_rows(
    program: Any,
    x: Tensor,
    data: Tensor,
    values: Sequence[float] = (-3, -2, -1, 0, 1, 2, 3),
    dims: int | None = None,
) -> tuple[Tensor, list[int]]:
    """Traversals: the latent mean of the input ``x`` (shape (D_x,)) with one dimension at a
    time set to each of ``values`` (prior standard deviations for a standard Normal prior),
    decoded. One row of ``len(values)`` images per dimension, the dimensions ordered by how
    much their posterior means vary over ``data`` (most first: the ones the model uses), the
    first ``dims`` of them (all by default).

    Returns the rows, shape (dims * len(values), D_x), and the dimensions in their order.
    """
    program = as_program(program)
    encode = program.require("encode", "traversal")
    decode = program.require("decode", "traversal")
    order = encode(data).mean.var(0).argsort(descending=True).tolist()[:dims]
    z = encode(x.unsqueeze(0)).mean[0]  # (D,)
    grid = torch.tensor(list(values), dtype=z.dtype, device=z.device)
    rows = []
    for d in order:
        walk = z.repeat(len(grid), 1)
        walk[:, d] = grid
        rows.append(decode(walk))
    return torch.cat(rows), order


@torch.no_grad()
def attribute_rows(
    program: Any,
    x: Tensor,
    data: Tensor,
    labels: Tensor,
    source: int,
    target: int,
    steps: int = 8,
) -> Tensor:
    """An attribute vector added in steps: the direction from the mean code of the points
    labelled ``source`` to that of the points labelled ``target`` (latent means over ``data``,
    shape (N, D_x), with ``labels`` (N,)), added to the code of ``x`` (shape (D_x,)) in
    ``steps`` equal steps from 0 to 1, decoded ("turn this 3 into an 8"); (steps, D_x).

    .. math::

        z_t = \\mu(x) + t\\,(\\bar\\mu_{\\mathrm{target}} - \\bar\\mu_{\\mathrm{source}}),
        \\qquad t = 0, \\tfrac{1}{S - 1}, \\dots, 1.
    """
    program = as_program(program)
    encode = program.require("encode", "attribute vectors")
    decode = program.require("decode", "attribute vectors")
    means = encode(data).mean  # (N, D)
    groups = {}
    for name, label in (("source", source), ("target", target)):
        rows = labels == label
        if not bool(rows.any()):
            raise ValueError(f"no point of the data has the {name} label {label}")
        groups[name] = means[rows].mean(0)
    direction = groups["target"] - groups["source"]
    t = torch.linspace(0, 1, steps, dtype=means.dtype, device=means.device).unsqueeze(-1)
    return decode(encode(x.unsqueeze(0)).mean + t * direction)
