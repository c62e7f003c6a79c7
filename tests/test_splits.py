"""The training/validation split of the MNIST-family datasets (--val-size), on IDX files of
the real format written here."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from ppl_vae.cli import main
from ppl_vae.data.datasets import load_dataset


def _idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim)  # 0x08: unsigned bytes
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    """A torchvision root (MNIST/raw/...) with 120 training and 30 test images."""
    root = tmp_path_factory.mktemp("idx")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 120), ("t10k", 30)):
        _idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


@pytest.mark.parametrize("val_size, sizes", [(None, (108, 12)), (20, (100, 20)), (0, (120, 0))])
def test_val_size_holds_out_the_last_training_images(mnist_root, val_size, sizes):
    data = load_dataset("mnist", data_dir=mnist_root, binarization="none", val_size=val_size)
    assert (len(data.train), len(data.val), len(data.test)) == (*sizes, 30)
    assert len(data.train_labels) == sizes[0] and len(data.val_labels) == sizes[1]
    everything = load_dataset("mnist", data_dir=mnist_root, binarization="none", val_size=0)
    assert (data.train == everything.train[: sizes[0]]).all(), "the first rows train"
    assert data.spec.get("val_size") == val_size


def test_a_val_size_out_of_range_or_for_a_fixed_split_is_one_line(mnist_root, tmp_path, capsys):
    with pytest.raises(ValueError, match="from 0 to 119"):
        load_dataset("mnist", data_dir=mnist_root, val_size=120)
    with pytest.raises(ValueError, match="digits has fixed splits"):
        load_dataset("digits", val_size=10)
    for flags, says in ((["--val-size", "-1"], "must be 0 or more"),
                        (["--val-size", "500"], "from 0 to 119")):  # fmt: skip
        argv = ["train", "--dataset", "mnist", "--data-dir", str(mnist_root), *flags]
        assert main([*argv, "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err


def test_training_on_all_images_without_validation_then_evaluating(mnist_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "mnist", "--data-dir", str(mnist_root), "--val-size", "0"]
    argv += ["--preset", "small", "--epochs", "2", "--patience", "1", "--eval-samples", "10"]
    assert main([*argv, "--no-progress", "--out", str(out)]) == 0
    assert "120 train / 0 val / 30 test" in capsys.readouterr().out
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) >= 1 and all("val_loss" not in h for h in history)
    assert json.loads((out / "config.json").read_text())["data"]["val_size"] == 0
    assert main(["evaluate", str(out), "--num-samples", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_points"] == 30
