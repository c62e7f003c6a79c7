"""Bad input gets an error that says what to do."""

import numpy as np
import pytest
import torch

from ppl_vae import build_vae
from ppl_vae.data.datasets import load_dataset
from ppl_vae.data.splits import check_data
from ppl_vae.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ppl_vae.training.trainer import fit


def test_non_binary_data_under_bernoulli_suggests_binarizing():
    vae = build_vae(64, z_dim=2, hidden=(8,))
    grey = torch.rand(20, 64)
    with pytest.raises(ValueError, match="not binary.*binarize.*continuous-bernoulli"):
        fit(vae, grey, epochs=1, progress=False)
    cb = build_vae(64, z_dim=2, hidden=(8,), likelihood="continuous-bernoulli")
    fit(cb, grey, epochs=1, progress=False)  # grey levels are fine under CB


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_infinite_values_are_refused(bad):
    x = torch.rand(10, 64).round()
    x[3, 5] = bad
    with pytest.raises(
        ValueError, match=r"1 NaN or infinite values in 1 rows \(first rows: \[3\]"
    ):
        fit(build_vae(64, z_dim=2, hidden=(8,)), x, epochs=1, progress=False)


def test_wrong_shapes_are_refused():
    vae = build_vae(64, z_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match=r"expects data of shape \(N, 64\), got \(10, 784\)"):
        fit(vae, torch.rand(10, 784).round(), epochs=1, progress=False)
    # images of 64 values are taken as rows (a Dataset of image tensors); other shapes are not
    assert vae.guide(torch.zeros(3, 8, 8)).shape == (3, 2)
    with pytest.raises(ValueError, match=r"shape \(N, 64\)"):
        vae.guide(torch.zeros(3, 8, 9))
    with pytest.raises(ValueError, match="flatten"):
        check_data(torch.zeros(3, 8, 8))


def test_missing_data_folder_says_where_to_point():
    with pytest.raises(FileNotFoundError, match="does not exist.*--data-dir"):
        load_dataset("mnist", data_dir="/no/such/folder")
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_dataset("/no/such/file.npz")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar")


def test_corrupt_and_foreign_checkpoints(tmp_path):
    path = save_checkpoint({"x": torch.ones(3)}, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut off, as by a crash of a non-atomic writer
    with pytest.raises(CheckpointError, match="unreadable.*delete it"):
        load_checkpoint(path)
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a ppl_vae checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="train first"):
        load_checkpoint(tmp_path / "missing.pt")


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = save_checkpoint({"v": 1}, tmp_path / "c.pt")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"v": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"], "a temporary file was left behind"


def test_user_arrays(tmp_path):
    rng = np.random.default_rng(0)
    images = (rng.random((50, 6, 6)) * 255).astype(np.uint8)
    np.savez(tmp_path / "d.npz", train=images[:40], test=images[40:])
    d = load_dataset(str(tmp_path / "d.npz"), binarization="static")
    assert d.train.shape == (36, 36) and d.test.shape == (10, 36) and d.image_shape == (6, 6)
    assert d.binary
    np.save(tmp_path / "a.npy", rng.random((30, 5)))
    d = load_dataset(str(tmp_path / "a.npy"), binarization="none")
    assert (len(d.train), len(d.val), len(d.test)) == (24, 3, 3) and not d.binary
    np.savez(tmp_path / "bad.npz", x=images)
    with pytest.raises(ValueError, match="named 'train'"):
        load_dataset(str(tmp_path / "bad.npz"))


def test_data_files_that_cannot_be_points_are_refused_with_a_hint(tmp_path):
    (tmp_path / "text.npy").write_text("not an array\n")
    with pytest.raises(ValueError, match="is not a numpy .npy file"):
        load_dataset(str(tmp_path / "text.npy"))
    np.save(tmp_path / "flat.npy", np.random.default_rng(0).random(50))
    with pytest.raises(ValueError, match="1-D array is ambiguous: reshape to"):
        load_dataset(str(tmp_path / "flat.npy"), binarization="none")
    np.save(tmp_path / "two.npy", np.random.default_rng(0).random((2, 5)))
    with pytest.raises(ValueError, match="too few to split off"):
        load_dataset(str(tmp_path / "two.npy"), binarization="none")
    one_channel = (np.random.default_rng(0).random((30, 1, 4, 4)) * 255).astype(np.uint8)
    np.save(tmp_path / "chw.npy", one_channel)
    d = load_dataset(str(tmp_path / "chw.npy"), binarization="static")
    assert d.image_shape == (4, 4) and d.x_dim == 16
    np.save(tmp_path / "rgb.npy", np.zeros((30, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"shape \(30, 4, 4, 3\); flatten each point"):
        load_dataset(str(tmp_path / "rgb.npy"), binarization="none")


def test_labels_travel_with_every_split(tmp_path):
    d = load_dataset("digits", binarization="static")
    from sklearn.datasets import load_digits

    full = load_digits()
    for x, y in ((d.train, d.train_labels), (d.val, d.val_labels), (d.test, d.test_labels)):
        assert y.shape == (len(x),) and y.dtype == torch.long
    # the labels follow their rows through the shuffle: look each grey image up
    grey = load_dataset("digits", binarization="none")
    lookup = {
        tuple(r.tolist()): int(t) for r, t in zip(full.data / 16.0, full.target, strict=True)
    }
    for x, y in ((grey.test, grey.test_labels), (grey.train[:50], grey.train_labels[:50])):
        assert [lookup[tuple(r.double().tolist())] for r in x] == y.tolist()
    rng = np.random.default_rng(0)
    images = rng.random((40, 3, 3))
    factors = rng.integers(0, 4, (40, 2))
    np.savez(tmp_path / "f.npz", train=images, labels=factors)
    f = load_dataset(str(tmp_path / "f.npz"), binarization="none")
    assert f.train_labels.shape == (32, 2) and f.test_labels.shape == (4, 2)
    assert {tuple(r.tolist()) for r in f.test_labels} <= {tuple(r) for r in factors.tolist()}
    np.savez(tmp_path / "bad.npz", train=images, y=factors[:5])
    with pytest.raises(ValueError, match="labels 'y' have shape"):
        load_dataset(str(tmp_path / "bad.npz"), binarization="none")
