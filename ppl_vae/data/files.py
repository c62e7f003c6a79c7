"""Reading data files: MNIST-family IDX files (through torchvision) and numpy/torch arrays."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ppl_vae.data.splits import Splits, _split

__all__ = []


_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


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
