"""Images as people keep them: a folder of image files, or a Dataset of image tensors, as rows."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ppl_vae.data.splits import Splits, _split

__all__ = ["COLOURS", "IMAGE_EXTENSIONS", "load_image_folder", "rows_from_dataset"]


#: ``auto``: RGB if any image is in colour, else grey; ``grey``: one channel (ITU-R 601-2
#: luma, as PIL converts); ``rgb``: three channels (grey images repeat their one channel).
COLOURS = ("auto", "grey", "rgb")

#: File name endings (any case) :func:`load_image_folder` reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

#: PIL modes of one grey channel; a palette ("P") image is grey when its palette is.
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

#: EXIF orientations that turn an image a quarter, swapping its height and width.
_QUARTER_TURNS = {5, 6, 7, 8}

ImageSize = int | Sequence[int] | None
Labels = tuple[Tensor | None, Tensor | None, Tensor | None]


def _size(image_size: ImageSize) -> tuple[int, int] | None:
    """``image_size`` as (height, width): an int is a square; a list (as JSON keeps a pair)
    works like a tuple."""
    if image_size is None:
        return None
    pair = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in pair):
        raise ValueError(
            f"image_size must be an int or a (height, width) pair of ints, got {image_size!r}; "
            "pass --image-size H[,W]"
        )
    if min(pair) < 1:
        raise ValueError(
            f"image_size must be at least 1, got {image_size!r}; pass --image-size H[,W] with "
            "positive sizes"
        )
    return pair


def _check_colour(colour: str) -> None:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; choose one of {list(COLOURS)}")


def _unreadable(path: Path, error: Exception) -> ValueError:
    return ValueError(f"cannot read {path} as an image ({error}); delete or replace the file")


def _is_image(path: Path, folder: Path) -> bool:
    # dot files are hidden copies (macOS writes ._name.png beside name.png), not images
    parts = path.relative_to(folder).parts
    return path.suffix.lower() in IMAGE_EXTENSIONS and not any(p.startswith(".") for p in parts)


def _find_images(folder: Path) -> tuple[list[Path], Tensor | None]:
    """The image files under ``folder`` in sorted order, and their labels: the index of their
    class subfolder (its first path component) among the sorted class names, or None when
    every image sits at the top level."""
    # os.walk follows linked class folders (as ImageFolder does), which Path.rglob skips
    found = (Path(d, f) for d, _, files in os.walk(folder, followlinks=True) for f in files)
    paths = sorted(
        (p for p in found if _is_image(p, folder)), key=lambda p: p.relative_to(folder).as_posix()
    )
    if not paths:
        raise ValueError(
            f"no PNG or JPEG images in {folder}; give a folder of image files "
            f"({', '.join(IMAGE_EXTENSIONS)}), one subfolder per class if they have classes"
        )
    top = [p for p in paths if p.parent == folder]
    if not top:
        classes = sorted({p.relative_to(folder).parts[0] for p in paths})
        index = {c: i for i, c in enumerate(classes)}
        return paths, torch.tensor([index[p.relative_to(folder).parts[0]] for p in paths])
    nested = [p for p in paths if p.parent != folder]
    if nested:
        raise ValueError(
            f"{folder} has images both at its top level ({top[0].name}) and in subfolders "
            f"({nested[0].relative_to(folder).as_posix()}); put every image in a class "
            "subfolder, or all of them at the top level"
        )
    return paths, None


def _is_grey(im: Any) -> bool:
    if im.mode in _GREY_MODES:
        return True
    if im.mode in ("P", "PA"):
        palette = im.getpalette() or [0, 1, 2]
        return palette[0::3] == palette[1::3] == palette[2::3]
    return False


def _upright(im: Any) -> bool:
    """Whether to turn ``im`` as its EXIF orientation says: photos (JPEG and the rest) keep
    it in the header; a PNG keeps it after the pixels, so reading it would decode the image
    twice, and PNGs are left as stored."""
    return im.format != "PNG"


def _header(path: Path) -> tuple[tuple[int, int], bool]:
    """The (height, width) an image file shows (after its EXIF rotation) and whether it is
    grey, read from its header without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            turned = _upright(im) and im.getexif().get(0x0112) in _QUARTER_TURNS
            return ((w, h) if turned else (h, w)), _is_grey(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None


def _prepare(im: Any, rgb: bool, size: tuple[int, int] | None) -> np.ndarray:
    """A PIL image as uint8 pixels of shape (C, H, W): C = 3 when ``rgb`` else 1, resized
    (bilinear, antialiased when shrinking) to ``size`` = (H, W) where given."""
    from PIL import Image

    if im.mode.startswith("I"):
        # PIL clips 16-bit grey at 255 when converting to "L"; scale 0..65535 to 0..255 instead
        deep = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.rint(deep / 257.0), 0, 255).astype(np.uint8), "L")
    im = im.convert("RGB" if rgb else "L")  # alpha is dropped, palettes looked up
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = np.array(im, dtype=np.uint8)  # (H, W, 3) or (H, W), a writable copy
    return pixels.transpose(2, 0, 1) if rgb else pixels[None]


def _pixels(path: Path, rgb: bool, size: tuple[int, int] | None) -> np.ndarray:
    """The pixels of an image file, upright as its EXIF orientation says, shape (C, H, W)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            return _prepare(ImageOps.exif_transpose(im) if _upright(im) else im, rgb, size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None


def convert_images(images: np.ndarray, colour: str, image_size: ImageSize) -> np.ndarray:
    """uint8 images of shape (N, C, H, W), C in {1, 3}, in the colour (``auto`` keeps C) and
    size asked for; returned as they are when nothing changes."""
    _check_colour(colour)
    size, c = _size(image_size), images.shape[1]
    rgb = c == 3 if colour == "auto" else colour == "rgb"
    if (3 if rgb else 1) == c and size in (None, tuple(images.shape[2:])):
        return images
    from PIL import Image

    pictures = (Image.fromarray(a.transpose(1, 2, 0) if c == 3 else a[0]) for a in images)
    return np.stack([_prepare(im, rgb, size) for im in pictures])


def as_rows(images: np.ndarray) -> Tensor:
    """uint8 images (N, C, H, W) as float32 rows (N, C*H*W) on the levels k/255."""
    return torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1)).float() / 255


def _split_folder(x: Tensor, y: Tensor | None, seed: int) -> tuple[Splits, Labels]:
    """80/10/10, at least one validation and one test image."""
    n = max(1, len(x) // 10)
    labels = _split(y, (n, n), seed) if y is not None else (None, None, None)
    return _split(x, (n, n), seed), labels


def load_image_folder(
    folder: str | os.PathLike,
    image_size: ImageSize = None,
    colour: str = "auto",
    seed: int = 0,
) -> tuple[Splits, Labels, tuple[int, int, int]]:
    """Read a folder of images (searched recursively) as float32 rows, split 80/10/10.

    Images in class subfolders (``folder/cat/*.png``, ``folder/dog/*.png``, as torchvision's
    ``ImageFolder``) are labelled by the index of their subfolder among the sorted names; images
    directly in ``folder`` have no labels. Pixels are uint8 / 255, so 8-bit images sit exactly on
    the levels k/255 (16-bit grey is scaled to 8 bits); a row is the (C, H, W) image flattened
    channel by channel. Files are read in sorted order, so a folder and a seed give the same
    splits every time. Files whose names start with a dot are skipped.

    Args:
        folder: the folder; files ending in one of :data:`IMAGE_EXTENSIONS`.
        image_size: None (every image must have the same size), an int (a square) or
            (height, width): resize every image to it (PIL bilinear, antialiased).
        colour: one of :data:`COLOURS`.
        seed: seed of the split.

    Returns:
        ``((train, val, test), (train_labels, val_labels, test_labels), (C, H, W))``: rows of
        shape (N, C*H*W) with values in [0, 1]; labels of shape (N,) or None.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: no images, fewer than 3, an unreadable file, images of mixed sizes without
            ``image_size``, a bad ``image_size`` or ``colour``; all before any image is decoded
            (an unreadable file found while decoding is named too).
    """
    _check_colour(colour)
    size = _size(image_size)
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    paths, labels = _find_images(root)
    if len(paths) < 3:
        raise ValueError(
            f"{root} holds {len(paths)} image(s), too few to split into training, validation "
            "and test sets; give at least 3"
        )
    headers = [_header(p) for p in paths]
    if size is None:
        first = headers[0][0]
        odd = next((i for i, (hw, _) in enumerate(headers) if hw != first), None)
        if odd is not None:
            a, b = (paths[i].relative_to(root).as_posix() for i in (0, odd))
            (h0, w0), (h1, w1) = first, headers[odd][0]
            raise ValueError(
                f"{root} holds images of different sizes ({a} is {h0}x{w0}, {b} is {h1}x{w1}, "
                "height x width); pass --image-size H[,W] (image_size=) to resize them all"
            )
    rgb = colour == "rgb" or (colour == "auto" and not all(grey for _, grey in headers))
    images = np.stack([_pixels(p, rgb, size) for p in paths])  # (N, C, H, W) uint8
    x = as_rows(images)
    splits, split_labels = _split_folder(x, labels, seed)
    return splits, split_labels, tuple(images.shape[1:])


def _image_tensor(item: Any, i: int) -> Tensor:
    """One dataset image as a float tensor (C, H, W) in [0, 1]."""
    from PIL import Image

    if not isinstance(item, Tensor):
        if not isinstance(item, Image.Image):
            raise TypeError(
                f"dataset item {i} is a {type(item).__name__}; give images as tensors (C, H, W) "
                "or PIL images, alone or as (image, label) pairs"
            )
        # as the folder reader converts (16-bit grey scaled, alpha dropped), not pil_to_tensor
        item = torch.from_numpy(_prepare(item, not _is_grey(item), None))
    img = item.unsqueeze(0) if item.dim() == 2 else item
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        hint = "; permute (H, W, C) images with img.permute(2, 0, 1)" if img.dim() == 3 else ""
        raise ValueError(
            f"dataset item {i} has shape {tuple(item.shape)}; give images of shape (C, H, W) "
            f"with C = 1 or 3{hint}"
        )
    if img.dtype == torch.uint8:
        return img.float() / 255
    img = img.float()
    if img.numel() and not bool(((img >= 0) & (img <= 1)).all()):
        lo, hi = float(img.min()), float(img.max())
        raise ValueError(
            f"dataset item {i} has values in [{lo:.3g}, {hi:.3g}]; give images in [0, 1] "
            "(ToTensor without Normalize) or as uint8"
        )
    return img


def rows_from_dataset(dataset: Any) -> tuple[Tensor, Tensor | None, tuple[int, int, int]]:
    """The images of a ``torch.utils.data.Dataset`` as float32 rows.

    Items are images, or (image, label) pairs; an image is a tensor of shape (C, H, W) (or
    (H, W)), C in {1, 3}, float in [0, 1] or uint8 (divided by 255), or a PIL image.

    Returns:
        ``(x, labels, (C, H, W))``: ``x`` of shape (N, C*H*W), each row an image flattened
        channel by channel; ``labels`` of shape (N,) (or (N, K)), None when the items have none.

    >>> x, y, shape = rows_from_dataset([(torch.ones(1, 2, 3), 7), (torch.zeros(1, 2, 3), 8)])
    >>> x.shape, y.tolist(), shape
    (torch.Size([2, 6]), [7, 8], (1, 2, 3))
    """
    items = (dataset[i] for i in range(len(dataset))) if hasattr(dataset, "__len__") else dataset
    rows: list[Tensor] = []
    labels: list[Any] = []
    shape: tuple[int, ...] | None = None
    for i, item in enumerate(items):
        paired = isinstance(item, (tuple, list))
        img = _image_tensor(item[0] if paired else item, i)
        if shape is None:
            shape, first = tuple(img.shape), i
        elif tuple(img.shape) != shape:
            raise ValueError(
                f"dataset items {first} and {i} have different shapes, {shape} and "
                f"{tuple(img.shape)}; resize them to one size (e.g. transforms.Resize)"
            )
        rows.append(img.reshape(-1))
        if paired and len(item) > 1:
            labels.append(item[1])
    if shape is None:
        raise ValueError("the dataset has no items")
    if labels and len(labels) != len(rows):
        raise ValueError("some dataset items have labels and some do not; give all or none")
    y = torch.stack([torch.as_tensor(v) for v in labels]) if labels else None
    return torch.stack(rows), y, shape
