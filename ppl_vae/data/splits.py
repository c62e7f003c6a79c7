"""Train/validation/test splits, input checks and binarization."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ppl_vae.runtime.kernels import bernoulli

__all__ = ["BINARIZE", "DataSplits", "binarize", "binarize_splits", "check_data", "chw"]


#: ``dynamic``: training data resampled x ~ Bernoulli(pixel) every epoch (validation and test
#: are binarized once, with a fixed seed, so evaluations compare); ``static``: every split
#: binarized once; ``threshold``: x > 0.5; ``none``: grey levels as they are.
BINARIZE = ("dynamic", "static", "threshold", "none")


@dataclass(frozen=True)
class DataSplits:
    """Train, validation and test data, each a float32 tensor of shape (N, D).

    Attributes:
        name: where the data came from.
        train, val, test: data points as rows; values in [0, 1] for image data.
        image_shape: the shape of one image, or None for non-image data: (height, width) for
            grey images, or (channels, height, width) with 1 or 3 channels; a row is the image
            flattened channel by channel (``img.reshape(-1)`` of a (C, H, W) tensor).
            :func:`chw` reads either as (C, H, W).
        dynamic: the training split is grey-level and is to be binarized afresh every epoch.
        binarization: how the splits were binarized (one of :data:`BINARIZE`).
        spec: how to load the same data again (``load_dataset``'s arguments), which run
            folders record; None for splits made by hand.
        train_labels, val_labels, test_labels: the labels of each split's rows, shape (N,)
            (classes) or (N, K) (several factors), where the data have them; training
            ignores them, pictures and metrics use them.
    """

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    image_shape: tuple[int, ...] | None = None
    dynamic: bool = False
    binarization: str = "none"
    spec: dict[str, Any] | None = None
    train_labels: Tensor | None = None
    val_labels: Tensor | None = None
    test_labels: Tensor | None = None

    @property
    def x_dim(self) -> int:
        return self.train.shape[1]

    @property
    def binary(self) -> bool:
        """Every split is (or, under dynamic binarization, will be drawn) in {0, 1}."""
        return self.dynamic or all(_is_binary(t) for t in (self.train, self.val, self.test))


def chw(image_shape: Sequence[int] | None) -> tuple[int, int, int]:
    """An ``image_shape`` as (channels, height, width): grey (H, W) images have one channel.

    >>> chw((28, 28)), chw((3, 32, 32))
    ((1, 28, 28), (3, 32, 32))
    """
    if image_shape is None:
        raise ValueError("the data are not images (their image_shape is None)")
    shape = tuple(int(s) for s in image_shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(
            f"an image shape is (H, W) or (C, H, W) of positive sizes, got {tuple(image_shape)}"
        )
    return (1, *shape) if len(shape) == 2 else shape


def _is_binary(x: Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def check_data(x: Tensor, *, binary: bool = False, what: str = "data") -> None:
    """Raise a ``ValueError`` that says what to do if ``x`` cannot be modelled as given.

    Checks: a 2-D float tensor, no NaN or infinite values, and values in {0, 1} when ``binary``
    (a Bernoulli likelihood). Shape: ``x`` is (N, D).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape (N, D), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(
            f"{what} must have shape (N, D) with one data point per row, got {tuple(x.shape)}; "
            "flatten images with x.reshape(len(x), -1)"
        )
    if not x.is_floating_point():
        raise ValueError(f"{what} must be floating point, got {x.dtype}; use x.float() / 255")
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = bad.any(dim=1).nonzero().flatten()
        raise ValueError(
            f"{what} has {int(bad.sum())} NaN or infinite values in {len(rows)} rows "
            f"(first rows: {rows[:5].tolist()}); drop or impute them before training"
        )
    if binary and not _is_binary(x):
        lo, hi = float(x.min()), float(x.max())
        raise ValueError(
            f"{what} is not binary (values in [{lo:.3g}, {hi:.3g}]) but the likelihood is "
            "Bernoulli; binarize it (--binarize dynamic|static|threshold, or "
            "ppl_vae.data.binarize) or use --likelihood continuous-bernoulli for grey levels"
        )


def check_grey_levels(x: Tensor, what: str) -> None:
    """Raise a ``ValueError`` unless every value of ``x`` lies in [0, 1], where x ~
    Bernoulli(x) is defined."""
    if len(x) and not bool(((x >= 0) & (x <= 1)).all()):
        lo, hi = float(x.min()), float(x.max())
        raise ValueError(
            f"{what} draws x ~ Bernoulli(x) and needs grey levels in [0, 1], got values in "
            f"[{lo:.3g}, {hi:.3g}]; rescale the data (x / 255 for 8-bit images)"
        )


def binarize(x: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """Binarize grey levels ``x`` in [0, 1], shape (N, D): ``stochastic``/``dynamic``/``static``
    draw x ~ Bernoulli(x); ``threshold`` keeps x > 0.5; ``none`` returns ``x``.

    >>> binarize(torch.tensor([[0.2, 0.7]]), "threshold")
    tensor([[0., 1.]])
    """
    if mode in ("dynamic", "static", "stochastic"):
        check_grey_levels(x, f"{mode} binarization")
        return bernoulli(x, generator=generator)
    if mode == "threshold":
        return (x > 0.5).to(x.dtype)
    if mode == "none":
        return x
    raise ValueError(f"unknown binarization {mode!r}; choose one of {list(BINARIZE)}")


Splits = tuple[Tensor, Tensor, Tensor]


def _split(x: Tensor, sizes: tuple[int, int], seed: int) -> Splits:
    """Shuffle rows with ``seed`` and cut off (val, test) rows of the given sizes; the same
    seed cuts a label tensor of the same length the same way."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x = x[perm]
    n_val, n_test = sizes
    return x[n_val + n_test :], x[:n_val], x[n_val : n_val + n_test]


def binarize_splits(data: DataSplits, binarization: str, seed: int = 0) -> DataSplits:
    """``data`` (grey levels) binarized as :data:`BINARIZE` says: ``dynamic`` binarizes the
    validation and test splits once with ``seed`` and marks the training split for redrawing
    every epoch; ``static`` and ``threshold`` binarize every split once; ``none`` keeps them."""
    if binarization not in BINARIZE:
        raise ValueError(f"unknown binarization {binarization!r}; choose one of {list(BINARIZE)}")
    if data.binarization != "none":
        raise ValueError(f"{data.name} is binarized already ({data.binarization})")
    spec = {**data.spec, "binarization": binarization} if data.spec is not None else None
    if binarization == "none":
        return data
    train, val, test = data.train, data.val, data.test
    if binarization != "threshold" and (train.min() < 0 or train.max() > 1):
        raise ValueError(
            f"{data.name} has values outside [0, 1], so it cannot be binarized stochastically; "
            "rescale it or use --binarize none with a Gaussian likelihood"
        )
    g = torch.Generator().manual_seed(seed + 1)
    val, test = binarize(val, binarization, g), binarize(test, binarization, g)
    marks = {"binarization": binarization, "spec": spec}
    if binarization == "dynamic":
        return replace(data, val=val, test=test, dynamic=True, **marks)
    return replace(data, train=binarize(train, binarization, g), val=val, test=test, **marks)
