"""Pictures: image grids of samples and reconstructions, training curves. Nothing here trains.

Figures are built with ``matplotlib.figure.Figure``, not pyplot: saving needs no display and
importing this module leaves the user's backend alone (inline plots in notebooks keep working).
Each function saves a PNG when given a path and returns the figure, which a notebook shows.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import make_grid

from ppl_vae.data.splits import chw

__all__ = ["image_grid", "interleave", "plot_curves", "plot_latents", "save_image_grid"]


def image_grid(
    images: Tensor, image_shape: Sequence[int], nrow: int = 10, title: str | None = None
) -> Figure:
    """A figure of rows ``images`` of shape (N, C*H*W), values in [0, 1], as a grid of HxW
    tiles: grey (dark on light) for ``image_shape`` (H, W) or (1, H, W), in colour for
    (3, H, W). A row is an image flattened in C-major order."""
    shape = chw(image_shape)
    tiles = images.detach().float().cpu().clamp(0, 1).reshape(-1, *shape)
    grid = make_grid(tiles, nrow=nrow, padding=1, pad_value=1.0)  # (3, rows, columns)
    colour = shape[0] == 3
    grid = grid.permute(1, 2, 0) if colour else grid[0]
    width = max(4.0, 0.6 * min(nrow, len(tiles)))  # about 0.6 inch a tile, 4 inches at least
    lines = textwrap.wrap(title, int(width * 11)) if title else []
    height = width * grid.shape[0] / grid.shape[1] + 0.2 * len(lines) + 0.1
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    if colour:
        ax.imshow(grid.numpy(), interpolation="nearest")
    else:
        ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if lines:
        ax.set_title("\n".join(lines), fontsize=9)
    fig.tight_layout()
    return fig


def save_image_grid(
    images: Tensor,
    image_shape: Sequence[int],
    path: str | os.PathLike,
    nrow: int = 10,
    title: str | None = None,
) -> Path:
    """Save :func:`image_grid` of ``images`` (N, C*H*W) as a PNG at ``path``; return the path."""
    image_grid(images, image_shape, nrow, title).savefig(path, dpi=120)
    return Path(path)


def interleave(originals: Tensor, reconstructions: Tensor, nrow: int) -> Tensor:
    """Stack rows so each row of originals is followed by the row of their reconstructions.

    Shapes: both (N, D) with N a multiple of ``nrow``; returns (2N, D).
    """
    o = originals.reshape(-1, nrow, originals.shape[-1])
    r = reconstructions.reshape(-1, nrow, reconstructions.shape[-1])
    return torch.stack([o, r], dim=1).reshape(-1, originals.shape[-1])


def plot_curves(
    history: Sequence[dict[str, float]], path: str | os.PathLike | None = None
) -> Figure:
    """Training and validation loss (nats per data point) against the epoch and, where the
    history has them, the validation bound's two terms (minus the reconstruction, the KL) in a
    second panel; saved as a PNG at ``path`` if given."""
    epochs = [h["epoch"] for h in history]
    terms = bool(history) and "val_kl" in history[0]
    fig = Figure(figsize=(9.5 if terms else 5, 3.2))
    axes = fig.subplots(1, 2 if terms else 1)
    ax = axes[0] if terms else axes
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    if history and "val_loss" in history[0]:
        ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("minus the bound (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    if terms:
        right = axes[1]
        right.plot(epochs, [-h["val_reconstruction"] for h in history], label="-reconstruction")
        right.plot(epochs, [h["val_kl"] for h in history], label="KL")
        right.set_xlabel("epoch")
        right.set_ylabel("validation terms (nats, beta = 1)")
        right.legend()
        right.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_latents(
    codes: Tensor,
    labels: Tensor | None = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """The latent means ``codes`` (N, D) as points in the plane, coloured by ``labels`` (N,)
    where given: the two coordinates themselves when D = 2, else the first two principal
    components (scikit-learn's PCA, their shares of the variance on the axes)."""
    z = codes.detach().double().cpu().numpy()
    if z.shape[1] == 1:
        z = np.concatenate([z, np.zeros_like(z)], 1)
    axes = ("z1", "z2")
    if z.shape[1] > 2:
        from sklearn.decomposition import PCA

        pca = PCA(2).fit(z)
        z = pca.transform(z)
        share = pca.explained_variance_ratio_
        axes = (f"PC1 ({share[0]:.0%} of the variance)", f"PC2 ({share[1]:.0%})")
    fig = Figure(figsize=(5, 4.2))
    ax = fig.subplots()
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.6)
    else:
        classes = labels.cpu().numpy()
        points = ax.scatter(z[:, 0], z[:, 1], c=classes, s=4, alpha=0.7, cmap="tab10")
        fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
