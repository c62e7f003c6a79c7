"""CIFAR-10, SVHN and CelebA read from a local torchvision root, downloaded only when asked."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ppl_vae.data.files import _cache_dir
from ppl_vae.data.images import ImageSize, Labels, _pixels, _size, as_rows, convert_images
from ppl_vae.data.splits import Splits

__all__ = ["NATURAL"]


#: The colour datasets and the files each reads under its torchvision root (``--data-dir``).
NATURAL = {
    "cifar10": "cifar-10-batches-py/ (data_batch_1..5, test_batch)",
    "svhn": "train_32x32.mat and test_32x32.mat",
    "celeba": "celeba/img_align_celeba/ and celeba/list_eval_partition.txt",
}

#: Side of the square CelebA images are resized to without ``image_size``.
CELEBA_SIZE = 64

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, Any]  # train, its labels, test, its labels


def _missing(name: str, root: Path | None) -> FileNotFoundError:
    if root is None:
        return FileNotFoundError(
            f"dataset {name!r} needs --data-dir, a torchvision root holding {NATURAL[name]}; "
            "nothing is downloaded without --download"
        )
    return FileNotFoundError(
        f"dataset {name!r} found no {NATURAL[name]} in {root}; point --data-dir at the "
        "torchvision root that holds them (nothing is downloaded without --download)"
    )


def _root(name: str, data_dir: Path | None, download: bool) -> Path:
    """The torchvision root of ``name``, its files downloaded into it first when asked."""
    if data_dir is None and not download:
        raise _missing(name, None)
    root = Path(data_dir).expanduser() if data_dir is not None else _cache_dir() / "torchvision"
    if download:
        from torchvision import datasets

        if name == "cifar10":
            datasets.CIFAR10(str(root), train=True, download=True)
        elif name == "svhn":
            for split in ("train", "test"):
                datasets.SVHN(str(root), split=split, download=True)
        else:
            datasets.CelebA(str(root), split="all", download=True)
    return root


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR-10 batch: uint8 images (n, 3, 32, 32) and labels (n,)."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["labels"], dtype=np.int64)
        return data.reshape(len(data), 3, 32, 32), labels  # rows are already R, G, B planes
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as e:
        raise ValueError(
            f"cannot read {path} as a CIFAR-10 batch ({type(e).__name__}: {e}); "
            "download the python version again"
        ) from None


def _read_cifar10(root: Path) -> Arrays:
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if not all((folder / n).is_file() for n in names):
        raise _missing("cifar10", root)
    train = [_cifar_batch(folder / n) for n in names[:5]]
    test, test_labels = _cifar_batch(folder / "test_batch")
    x, y = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    return x, y, test, test_labels


def _svhn_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN .mat file: uint8 images (n, 3, 32, 32) and digits (n,), 0 labelled 0 (the
    file labels it 10)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError(
            "dataset 'svhn' reads MATLAB .mat files with scipy, which is not installed: "
            "pip install scipy"
        ) from None
    try:
        mat = loadmat(str(path))
        x, y = np.asarray(mat["X"], dtype=np.uint8), np.asarray(mat["y"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read {path} as an SVHN .mat file ({e})") from None
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y.reshape(-1) % 10  # (H, W, C, N)


def _read_svhn(root: Path) -> Arrays:
    files = [root / "train_32x32.mat", root / "test_32x32.mat"]
    if not all(f.is_file() for f in files):
        raise _missing("svhn", root)
    return (*_svhn_split(files[0]), *_svhn_split(files[1]))


def _celeba_table(path: Path) -> dict[str, list[int]]:
    """A CelebA list file: a row of integers for every image file name."""
    rows = {}
    for line in path.read_text().splitlines():
        words = line.split()
        if len(words) > 1 and words[0].lower().endswith((".jpg", ".png")):
            rows[words[0]] = [int(w) for w in words[1:]]
    return rows


def _read_celeba(
    root: Path, image_size: ImageSize, colour: str
) -> tuple[Splits, Labels, tuple[int, int, int]]:
    """CelebA's own train/valid/test partition; labels: the 40 attributes in {0, 1}."""
    folder = root / "celeba"
    images, partition = folder / "img_align_celeba", folder / "list_eval_partition.txt"
    if not images.is_dir() or not partition.is_file():
        raise _missing("celeba", root)
    part = _celeba_table(partition)
    attrs = folder / "list_attr_celeba.txt"
    attr = _celeba_table(attrs) if attrs.is_file() else None
    size = _size(image_size) or (CELEBA_SIZE, CELEBA_SIZE)
    rgb = colour != "grey"
    shape = (3 if rgb else 1, *size)
    splits, labels = [], []
    for k in range(3):  # 0 train, 1 valid, 2 test
        names = sorted(n for n, p in part.items() if p[0] == k)
        pixels = [_pixels(images / n, rgb, size) for n in names]
        splits.append(as_rows(np.stack(pixels) if pixels else np.zeros((0, *shape), np.uint8)))
        if attr is not None:
            lacking = next((n for n in names if n not in attr), None)
            if lacking is not None:
                raise ValueError(f"{attrs} has no attributes for {lacking}; download it again")
            rows = [attr[n] for n in names]  # -1 or 1
            labels.append((torch.tensor(rows, dtype=torch.long).reshape(len(rows), -1) + 1) // 2)
    return tuple(splits), tuple(labels) if attr is not None else (None, None, None), shape


def load_natural(
    name: str,
    data_dir: str | Path | None,
    download: bool = False,
    image_size: ImageSize = None,
    colour: str = "auto",
) -> tuple[Splits, Labels, tuple[int, int, int]]:
    """CIFAR-10, SVHN or CelebA as float32 rows (N, C*H*W) in [0, 1], from a torchvision root.

    The test split is the official one; the last 10% of the official training split validate
    (CelebA: its own validation split). Images are resized to ``image_size`` (CelebA: 64x64
    without it) and made grey when ``colour`` is ``grey``. CelebA at 64x64 takes about 10 GB
    as float32 rows.

    Returns:
        ``((train, val, test), labels, (C, H, W))`` as :func:`load_image_folder` does; labels
        are classes (N,) (SVHN: the digit, 0 for 0) or CelebA's 40 attributes (N, 40).

    Raises:
        FileNotFoundError: the files are not under ``data_dir`` (and ``download`` is off).
    """
    root = _root(name, Path(data_dir) if data_dir is not None else None, download)
    if name == "celeba":
        return _read_celeba(root, image_size, colour)
    x, y, test, test_y = _read_cifar10(root) if name == "cifar10" else _read_svhn(root)
    x, test = convert_images(x, colour, image_size), convert_images(test, colour, image_size)
    cut = len(x) - max(1, len(x) // 10)  # the last 10% of the training images validate
    splits: tuple[Tensor, ...] = as_rows(x[:cut]), as_rows(x[cut:]), as_rows(test)
    y_t = torch.from_numpy(y)
    labels = y_t[:cut], y_t[cut:], torch.from_numpy(test_y)
    return splits, labels, tuple(x.shape[1:])
