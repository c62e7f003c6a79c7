"""Images as people keep them: folders of PNG/JPEG files (grey, colour, class subfolders, odd
sizes), CIFAR-10/SVHN/CelebA roots written here in their real formats, and Datasets of image
tensors, read into rows of the (C, H, W) images, with one clear line for every bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ppl_vae.data import chw, load_dataset, load_image_folder, rows_from_dataset
from ppl_vae.data.splits import _split

H, W = 5, 7  # odd and not square, so a swapped height and width shows


def _save(path, array: np.ndarray, **kwargs) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return array


def _chw_row(array: np.ndarray) -> torch.Tensor:
    """The row an (H, W) or (H, W, 3) uint8 image should become: (C, H, W) flattened, / 255."""
    chw_array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.array(chw_array).reshape(-1)).float() / 255


def _all_rows(splits) -> torch.Tensor:
    return torch.cat(list(splits))


def _assert_same_rows(got: torch.Tensor, want: list[torch.Tensor]) -> None:
    """``got`` holds exactly the rows ``want`` (in any order), bit for bit."""
    assert len(got) == len(want), f"{len(got)} rows loaded, {len(want)} images saved"
    for i, row in enumerate(want):
        assert any(torch.equal(row, r) for r in got), f"image {i} is not among the rows exactly"


def _one_line_error(excinfo, *parts: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, f"the message is not one line: {message!r}"
    for part in parts:
        assert part in message, f"{part!r} missing from {message!r}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_grey_pngs_round_trip_exactly_as_k_over_255(tmp_path, rng):
    images = [
        _save(tmp_path / f"{i}.png", rng.integers(0, 256, (H, W), np.uint8)) for i in range(10)
    ]
    splits, labels, shape = load_image_folder(tmp_path)
    assert shape == (1, H, W), f"image shape {shape}"
    assert labels == (None, None, None), "images at the top level have no labels"
    assert [len(s) for s in splits] == [8, 1, 1], "80/10/10"
    rows = _all_rows(splits)
    assert rows.dtype == torch.float32
    _assert_same_rows(rows, [_chw_row(a) for a in images])
    levels = rows * 255
    assert torch.equal(levels, levels.round()), "8-bit pixels sit exactly on k/255"


def test_rgb_pngs_are_rows_of_chw_images(tmp_path, rng):
    images = [
        _save(tmp_path / f"{i}.png", rng.integers(0, 256, (H, W, 3), np.uint8)) for i in range(4)
    ]
    splits, _, shape = load_image_folder(tmp_path)
    assert shape == (3, H, W), f"image shape {shape}"
    _assert_same_rows(_all_rows(splits), [_chw_row(a) for a in images])


def test_colour_auto_grey_and_rgb(tmp_path, rng):
    grey = [
        _save(tmp_path / f"g{i}.png", rng.integers(0, 256, (H, W), np.uint8)) for i in range(3)
    ]
    rgb = _save(tmp_path / "rgb.png", rng.integers(0, 256, (H, W, 3), np.uint8))
    splits, _, shape = load_image_folder(tmp_path)  # one colour image makes them all RGB
    assert shape == (3, H, W), "auto: one colour image makes the set RGB"
    _assert_same_rows(
        _all_rows(splits), [_chw_row(np.stack([g] * 3, -1)) for g in grey] + [_chw_row(rgb)]
    )

    splits, _, shape = load_image_folder(tmp_path, colour="grey")
    assert shape == (1, H, W)
    luma = np.asarray(Image.fromarray(rgb).convert("L"))  # PIL's ITU-R 601-2 luma
    _assert_same_rows(_all_rows(splits), [_chw_row(g) for g in grey] + [_chw_row(luma)])

    (tmp_path / "rgb.png").unlink()
    assert load_image_folder(tmp_path)[2] == (1, H, W), "auto: all grey stays grey"
    assert load_image_folder(tmp_path, colour="rgb")[2] == (3, H, W)


def test_grey_palettes_and_16_bit_grey_are_grey_on_k_over_255(tmp_path):
    levels = np.arange(H * W, dtype=np.uint8).reshape(H, W) * 7
    for i in range(3):
        palette = Image.fromarray((levels + i).astype(np.uint8), "P")
        palette.putpalette([v for level in range(256) for v in (level, level, level)])
        palette.save(tmp_path / f"p{i}.png")
    deep = 255 - levels  # unlike every palette image
    Image.fromarray(deep.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit grey
    assert Image.open(tmp_path / "p0.png").mode == "P", "the test needs a palette file"
    assert Image.open(tmp_path / "deep.png").mode.startswith("I"), "the test needs a 16-bit file"
    splits, _, shape = load_image_folder(tmp_path)
    assert shape == (1, H, W), "grey palettes and 16-bit grey are grey"
    want = [_chw_row((levels + i).astype(np.uint8)) for i in range(3)] + [_chw_row(deep)]
    _assert_same_rows(_all_rows(splits), want)


def test_class_subfolders_label_the_images_by_sorted_name(tmp_path, rng):
    for k, name in enumerate(["cat", "dog", "emu"]):  # made out of order on purpose below
        for i in range(4):
            img = rng.integers(0, 50, (H, W), np.uint8)
            img[0, 0] = 100 * k + i  # the class, written into the first pixel
            _save(tmp_path / name / ("sub" if i == 3 else "") / f"{i}.PNG", img)
    splits, labels, _ = load_image_folder(tmp_path, seed=3)
    for split, (x, y) in enumerate(zip(splits, labels, strict=True)):
        assert y is not None and y.dtype == torch.long, "subfolders give integer labels"
        want = torch.div((x[:, 0] * 255).round().long(), 100, rounding_mode="floor")
        assert torch.equal(y, want), f"split {split}: labels {y.tolist()} != {want.tolist()}"
    assert sorted(torch.cat(labels).tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_the_same_folder_and_seed_give_the_same_splits(tmp_path, rng):
    """Files are taken in sorted order (not the order the file system lists them in) and then
    split by the seed, as _split cuts every other dataset."""
    names = [f"{i}.png" for i in rng.permutation(20)]  # made out of order; "10" sorts before "2"
    images = {n: _save(tmp_path / n, rng.integers(0, 256, (H, W), np.uint8)) for n in names}
    in_order = torch.stack([_chw_row(images[n]) for n in sorted(names)])
    a, b, c = (load_image_folder(tmp_path, seed=s)[0] for s in (0, 0, 1))
    for got, want in zip(a, _split(in_order, (2, 2), 0), strict=True):
        assert torch.equal(got, want), "the sorted files, split by the seed"
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), "same seed, same splits"
    assert not torch.equal(a[1], c[1]), "another seed, another validation split"
    assert [len(s) for s in a] == [16, 2, 2]


@pytest.mark.parametrize("n, sizes", [(3, [1, 1, 1]), (4, [2, 1, 1]), (25, [21, 2, 2])])
def test_few_images_still_give_one_validation_and_one_test_image(tmp_path, n, sizes):
    for i in range(n):
        _save(tmp_path / f"{i}.png", np.full((2, 3), i, np.uint8))
    assert [len(s) for s in load_image_folder(tmp_path)[0]] == sizes


def test_resizing_to_image_size(tmp_path, rng):
    small = _save(tmp_path / "small.png", rng.integers(0, 256, (H, W, 3), np.uint8))
    _save(tmp_path / "big.png", rng.integers(0, 256, (9, 4, 3), np.uint8))
    _save(tmp_path / "flat.png", np.full((8, 8, 3), 77, np.uint8))
    splits, _, shape = load_image_folder(tmp_path, image_size=(3, 11))
    assert shape == (3, 3, 11), f"image_size (H, W) = (3, 11) gave {shape}"
    resized = np.asarray(Image.fromarray(small).resize((11, 3), Image.Resampling.BILINEAR))
    rows = _all_rows(splits)
    assert any(torch.equal(_chw_row(resized), r) for r in rows), "PIL bilinear to (H, W)"
    assert any(torch.equal(torch.full((3 * 3 * 11,), 77 / 255), r) for r in rows), "flat stays"
    assert load_image_folder(tmp_path, image_size=4)[2] == (3, 4, 4), "an int is a square"
    same = load_image_folder(tmp_path, image_size=[H, W])[0]  # a list, as JSON keeps it
    assert any(torch.equal(_chw_row(small), r) for r in _all_rows(same)), "no resize, exact"


def test_jpegs_any_case_and_hidden_files_skipped(tmp_path):
    for i, name in enumerate(["a.jpg", "b.JPEG", "c.Jpg"]):
        _save(tmp_path / name, np.full((H, W, 3), (40 * i, 100, 200), np.uint8), quality=95)
    (tmp_path / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (tmp_path / "notes.txt").write_text("not an image")
    splits, _, shape = load_image_folder(tmp_path)
    assert shape == (3, H, W) and len(_all_rows(splits)) == 3, "three JPEGs, dot file skipped"
    means = _all_rows(splits).reshape(3, 3, -1).mean(-1) * 255
    got = sorted(means.round().tolist())
    want = [[0, 100, 200], [40, 100, 200], [80, 100, 200]]
    np.testing.assert_allclose(got, want, atol=3, err_msg="JPEG colours, to JPEG's rounding")


def test_bad_folders_are_one_clear_line(tmp_path, rng):
    with pytest.raises(FileNotFoundError) as e:
        load_image_folder(tmp_path / "nowhere")
    _one_line_error(e, "no such folder", "nowhere")

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError) as e:
        load_image_folder(tmp_path / "empty")
    _one_line_error(e, f"no PNG or JPEG images in {tmp_path / 'empty'}")

    two = tmp_path / "two"
    for i in range(2):
        _save(two / f"{i}.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError) as e:
        load_image_folder(two)
    _one_line_error(e, "holds 2 image(s)", "at least 3")

    mixed = tmp_path / "mixed"
    _save(mixed / "a.png", np.zeros((H, W), np.uint8))
    _save(mixed / "b.png", np.zeros((H, W), np.uint8))
    _save(mixed / "c.png", np.zeros((W, H), np.uint8))
    with pytest.raises(ValueError) as e:
        load_image_folder(mixed)
    _one_line_error(e, f"a.png is {H}x{W}", f"c.png is {W}x{H}", "pass --image-size H[,W]")
    assert load_image_folder(mixed, image_size=(H, W))[2] == (1, H, W), "image_size mends it"

    both = tmp_path / "both"
    _save(both / "top.png", np.zeros((2, 2), np.uint8))
    for i in range(2):
        _save(both / "cls" / f"{i}.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError) as e:
        load_image_folder(both)
    _one_line_error(e, "top.png", "cls/0.png", "subfolder")


def test_unreadable_files_are_named(tmp_path, rng):
    for i in range(3):
        _save(tmp_path / f"{i}.png", rng.integers(0, 256, (20, 20), np.uint8))
    (tmp_path / "junk.png").write_bytes(b"this is not a PNG")
    with pytest.raises(ValueError) as e:
        load_image_folder(tmp_path)
    _one_line_error(e, "cannot read", "junk.png", "delete or replace")

    (tmp_path / "junk.png").unlink()
    whole = (tmp_path / "0.png").read_bytes()
    (tmp_path / "0.png").write_bytes(whole[: len(whole) // 2])  # the header reads, pixels don't
    with pytest.raises(ValueError) as e:
        load_image_folder(tmp_path)
    _one_line_error(e, "cannot read", "0.png")


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"image_size": 0}, "image_size must be at least 1"),
        ({"image_size": (4, -1)}, "image_size must be at least 1"),
        ({"image_size": (1, 2, 3)}, "(height, width) pair"),
        ({"colour": "purple"}, "unknown colour 'purple'; choose one of ['auto', 'grey', 'rgb']"),
    ],
)
def test_bad_image_size_or_colour(tmp_path, kwargs, says):
    for i in range(3):
        _save(tmp_path / f"{i}.png", np.zeros((2, 2), np.uint8))
    for load in (load_image_folder, lambda f, **kw: load_dataset(str(f), **kw)):
        with pytest.raises(ValueError) as e:
            load(tmp_path, **kwargs)
        _one_line_error(e, says)


def test_load_dataset_reads_a_folder_and_records_only_non_defaults(tmp_path, rng):
    images = [
        _save(tmp_path / f"{i}.png", rng.integers(0, 256, (H, W), np.uint8)) for i in range(10)
    ]
    data = load_dataset(str(tmp_path), binarization="none")
    assert data.image_shape == (1, H, W) and data.x_dim == H * W
    assert data.spec == {
        "dataset": str(tmp_path),
        "data_dir": None,
        "binarization": "none",
        "seed": 0,
    }, f"defaults are not recorded: {data.spec}"
    _assert_same_rows(torch.cat([data.train, data.val, data.test]), [_chw_row(a) for a in images])

    data = load_dataset(str(tmp_path), binarization="none", image_size=(4, 6), colour="rgb")
    assert data.image_shape == (3, 4, 6)
    assert (data.spec["image_size"], data.spec["colour"]) == ([4, 6], "rgb"), data.spec
    assert load_dataset(str(tmp_path), image_size=3).spec["image_size"] == 3
    spec = dict(data.spec)
    again = load_dataset(spec.pop("dataset"), **spec)
    assert torch.equal(again.train, data.train), "the spec loads the same data again"


def test_builtin_datasets_keep_their_shape_and_spec_and_refuse_image_options():
    data = load_dataset("digits", binarization="none")
    assert data.image_shape == (8, 8), "grey built-in sets keep (H, W)"
    assert set(data.spec) == {"dataset", "data_dir", "binarization", "seed"}, data.spec
    for kwargs in ({"image_size": 4}, {"colour": "rgb"}):
        with pytest.raises(ValueError) as e:
            load_dataset("digits", **kwargs)
        _one_line_error(e, "apply to image folders and cifar10/svhn/celeba, not digits")


def test_chw_reads_both_image_shapes():
    assert chw((28, 28)) == (1, 28, 28) and chw((3, 32, 32)) == (3, 32, 32)
    assert chw([1, 5, 7]) == (1, 5, 7)
    for bad in ((784,), (2, 3, 4, 5), (0, 4), None):
        with pytest.raises(ValueError):
            chw(bad)


def _fake_cifar10(root, rng, n=4, n_test=3):
    """A cifar-10-batches-py folder in the real format: pickled dicts of (n, 3072) uint8 rows
    (the R, G and B planes of 32x32 images) and lists of labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name, size in [*((f"data_batch_{i}", n) for i in range(1, 6)), ("test_batch", n_test)]:
        batch = {
            "batch_label": name,
            "data": rng.integers(0, 256, (size, 3072), np.uint8),
            "labels": rng.integers(0, 10, size).tolist(),
            "filenames": [f"{name}_{j}.png" for j in range(size)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump({k.encode() if k == "batch_label" else k: v for k, v in batch.items()}, f)
        batches[name] = batch
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return batches


def test_cifar10_reads_a_torchvision_root(tmp_path, rng):
    batches = _fake_cifar10(tmp_path, rng)
    data = load_dataset("cifar10", data_dir=tmp_path, binarization="none")
    assert data.image_shape == (3, 32, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, 3), "val: last 10%"
    train = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    want = torch.from_numpy(train).float() / 255
    assert torch.equal(data.train, want[:18]) and torch.equal(data.val, want[18:]), "rows"
    assert torch.equal(data.test, torch.from_numpy(batches["test_batch"]["data"]).float() / 255)
    labels = sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert data.train_labels.tolist() == labels[:18] and data.val_labels.tolist() == labels[18:]
    assert data.test_labels.tolist() == batches["test_batch"]["labels"]

    small = load_dataset("cifar10", data_dir=tmp_path, colour="grey", image_size=16)
    assert small.image_shape == (1, 16, 16) and small.x_dim == 256
    assert small.spec["colour"] == "grey" and small.spec["image_size"] == 16


def test_svhn_reads_a_torchvision_root(tmp_path, rng):
    scipy_io = pytest.importorskip("scipy.io")
    mats = {}
    for split, n in (("train", 10), ("test", 3)):
        mats[split] = {
            "X": rng.integers(0, 256, (32, 32, 3, n), np.uint8),
            "y": rng.integers(1, 11, (n, 1)),
        }
        scipy_io.savemat(tmp_path / f"{split}_32x32.mat", mats[split])
    data = load_dataset("svhn", data_dir=tmp_path, binarization="none")
    assert data.image_shape == (3, 32, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (9, 1, 3)
    x = mats["test"]["X"]
    for i in range(3):
        assert torch.equal(data.test[i], _chw_row(x[..., i])), f"test image {i}, (H, W, C, N)"
    assert data.test_labels.tolist() == (mats["test"]["y"].reshape(-1) % 10).tolist(), "10 is 0"


def test_celeba_reads_a_torchvision_root(tmp_path, rng):
    folder = tmp_path / "celeba"
    names = [f"{i:06d}.jpg" for i in range(1, 7)]
    for name in names:
        _save(folder / "img_align_celeba" / name, rng.integers(0, 256, (21, 17, 3), np.uint8))
    parts = [0, 0, 0, 0, 1, 2]
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{n} {p}\n" for n, p in zip(names, parts, strict=True))
    )
    attrs = rng.choice([-1, 1], (6, 2))
    (folder / "list_attr_celeba.txt").write_text(
        "6\nSmiling Young\n"
        + "".join(f"{n} {a} {b}\n" for n, (a, b) in zip(names, attrs, strict=True))
    )
    data = load_dataset("celeba", data_dir=tmp_path, binarization="none", image_size=(6, 5))
    assert data.image_shape == (3, 6, 5)
    assert (len(data.train), len(data.val), len(data.test)) == (4, 1, 1), "CelebA's own split"
    assert data.train_labels.tolist() == ((attrs[:4] + 1) // 2).tolist(), "attributes in {0, 1}"
    assert load_dataset("celeba", data_dir=tmp_path).image_shape == (3, 64, 64), "64 by default"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar10", "cifar-10-batches-py/ (data_batch_1..5, test_batch)"),
        ("svhn", "train_32x32.mat and test_32x32.mat"),
        ("celeba", "celeba/img_align_celeba/ and celeba/list_eval_partition.txt"),
    ],
)
def test_missing_torchvision_files_say_what_is_expected(tmp_path, name, expected):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset(name)
    _one_line_error(e, "--data-dir", expected, "nothing is downloaded without --download")
    with pytest.raises(FileNotFoundError) as e:
        load_dataset(name, data_dir=tmp_path)
    _one_line_error(e, str(tmp_path), expected, "nothing is downloaded without --download")


def test_rows_from_a_dataset_of_image_tensors():
    images = torch.randint(0, 256, (5, 3, H, W), dtype=torch.uint8)
    labels = torch.arange(5)
    x, y, shape = rows_from_dataset(torch.utils.data.TensorDataset(images, labels))
    assert shape == (3, H, W) and torch.equal(y, labels)
    torch.testing.assert_close(x, images.reshape(5, -1).float() / 255, rtol=0, atol=0)

    floats = [torch.rand(1, H, W) for _ in range(3)]
    x, y, shape = rows_from_dataset(floats)
    assert y is None and shape == (1, H, W)
    assert torch.equal(x, torch.stack(floats).reshape(3, -1))

    pictures = [(Image.fromarray(a.permute(1, 2, 0).numpy()), 0) for a in images]
    x, _, shape = rows_from_dataset(pictures)
    assert shape == (3, H, W) and torch.equal(x, images.reshape(5, -1).float() / 255), "PIL"


@pytest.mark.parametrize(
    "items, says",
    [
        ([torch.rand(1, 4, 4), torch.rand(1, 4, 5)], "items 0 and 1 have different shapes"),
        ([torch.rand(4, 4, 3)], "img.permute(2, 0, 1)"),
        ([torch.rand(1, 4, 4) * 2 - 1], "give images in [0, 1]"),
        ([], "the dataset has no items"),
    ],
)
def test_rows_from_a_bad_dataset(items, says):
    with pytest.raises(ValueError) as e:
        rows_from_dataset(items)
    _one_line_error(e, says)
