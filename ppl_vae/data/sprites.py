"""Sprites: binary images with known factors of variation, made procedurally in the manner of
dSprites (Matthey et al. 2017), so disentanglement can be measured offline.

Every combination of a grid of factor values is drawn once: shape (square, ellipse, heart),
scale, orientation, and x and y position. A pixel is on when its centre, mapped into the
shape's own frame (translated, rotated, scaled back), lies inside the shape.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["FACTORS", "SHAPES", "make_sprites"]


SHAPES = ("square", "ellipse", "heart")


#: The factor names, in the order of the label columns.
FACTORS = ("shape", "scale", "orientation", "x", "y")


def _inside(shape: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Whether points (a, b) of a shape's own frame (unit size) are inside it; shape (N, H, W).

    ``shape`` (N, 1, 1) holds the indices into :data:`SHAPES`.
    """
    square = (a.abs() <= 0.8) & (b.abs() <= 0.8)
    ellipse = (a / 1.0) ** 2 + (b / 0.55) ** 2 <= 1.0
    hx, hy = 1.15 * a, 1.15 * b + 0.1  # the heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3, upright
    heart = (hx**2 + hy**2 - 1) ** 3 - hx**2 * hy**3 <= 0
    return torch.where(shape == 0, square, torch.where(shape == 1, ellipse, heart))


def make_sprites(
    size: int = 32,
    scales: int = 4,
    orientations: int = 8,
    positions: int = 8,
    chunk: int = 2048,
) -> tuple[Tensor, Tensor]:
    """Every combination of the factor grid, drawn at ``size`` x ``size``.

    Factors (label columns, in :data:`FACTORS` order, as indices into each grid): shape (3),
    scale (``scales`` values from 0.5 to 1 of the largest size), orientation (``orientations``
    angles in [0, 2 pi)), x and y position (``positions`` values each, the shape kept inside
    the frame). The default grid is 3 x 4 x 8 x 8 x 8 = 6,144 images.

    Returns:
        images, shape (N, size * size), values in {0, 1} (float32); factor indices, shape
        (N, 5) (int64).

    >>> x, y = make_sprites(size=16, scales=2, orientations=2, positions=2)
    >>> x.shape, y.shape, int(y[:, 0].max())
    (torch.Size([48, 256]), torch.Size([48, 5]), 2)
    """
    grids = [torch.arange(n) for n in (len(SHAPES), scales, orientations, positions, positions)]
    factors = torch.cartesian_prod(*grids)  # (N, 5)
    scale_values = torch.linspace(0.5, 1.0, scales) if scales > 1 else torch.ones(1)
    angles = torch.arange(orientations) * (2 * math.pi / orientations)
    largest = 0.28  # half-width of the largest shape, in units of the frame (-1 to 1)
    spots = torch.linspace(-1 + 1.45 * largest, 1 - 1.45 * largest, positions)
    if positions == 1:
        spots = torch.zeros(1)
    coords = (torch.arange(size) + 0.5) / size * 2 - 1
    v, u = torch.meshgrid(-coords, coords, indexing="ij")  # y up, x right; (H, W)
    images = []
    for lo in range(0, len(factors), chunk):
        f = factors[lo : lo + chunk]
        s = (scale_values[f[:, 1]] * largest).view(-1, 1, 1)
        theta = angles[f[:, 2]].view(-1, 1, 1)
        du = u - spots[f[:, 3]].view(-1, 1, 1)  # (n, H, W)
        dv = v - spots[f[:, 4]].view(-1, 1, 1)
        cos, sin = torch.cos(theta), torch.sin(theta)
        a = (cos * du + sin * dv) / s  # rotate back by theta, scale to unit size
        b = (-sin * du + cos * dv) / s
        images.append(_inside(f[:, 0].view(-1, 1, 1), a, b).reshape(len(f), -1))
    return torch.cat(images).float(), factors
