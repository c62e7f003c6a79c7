"""``ppl-vae`` on a folder of colour images: train a convolutional VAE, bits per dimension,
colour pictures, and one clear line for each kind of bad folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ppl_vae.cli import main


def _folder(root: Path, n: int = 20, size=(10, 12), classes=("red", "blue")) -> Path:
    """``n`` RGB PNGs a class in class subfolders: a bright square of the class's colour on
    dark noise."""
    rng = np.random.default_rng(0)
    for channel, name in zip((0, 2), classes, strict=False):
        (root / name).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
            r, c = rng.integers(0, size[0] - 4), rng.integers(0, size[1] - 4)
            a[r : r + 4, c : c + 4, channel] = 220
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root


def _one_line_error(capsys, argv: list[str], message: str, out: Path) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists(), "nothing is written for bad input"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A conv VAE trained one epoch on a folder of colour PNGs (10x12, two classes)."""
    root = tmp_path_factory.mktemp("images")
    images = _folder(root / "images")
    run = root / "run"
    argv = ["train", "--dataset", str(images), "--net", "conv", "--channels", "8,16"]
    argv += ["--hidden", "32", "--z-dim", "4", "--epochs", "1", "--eval-samples", "5"]
    assert main([*argv, "--no-progress", "--out", str(run)]) == 0
    return run


def test_a_folder_of_colour_images_trains_with_the_discretized_logistic(trained):
    doc = json.loads((trained / "config.json").read_text())
    kwargs = doc["program"]["kwargs"]
    assert kwargs["likelihood"] == "discretized-logistic", "auto picks it for 8-bit images"
    assert (kwargs["net"], kwargs["image_shape"]) == ("conv", [3, 10, 12])
    assert doc["run"]["likelihood"] == "discretized-logistic"


def test_evaluate_prints_bits_per_dimension_of_the_256_level_likelihood(trained, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(trained), "--num-samples", "10", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    d = 3 * 10 * 12
    expected = -metrics["log_likelihood"] / (d * math.log(2))  # a mass: no discretization term
    assert metrics["bits_per_dim"] == pytest.approx(expected, rel=1e-9)
    assert metrics["bits_per_dim_basis"] == "probability on 256 levels"
    assert 0 < metrics["bits_per_dim"] < 16, metrics["bits_per_dim"]


def test_report_writes_colour_pictures(trained):
    assert main(["report", str(trained), "--num-samples", "5"]) == 0
    for name in ("samples", "reconstructions", "interpolate", "traverse"):
        assert (trained / f"{name}.png").is_file(), name
    # the originals in the reconstructions keep their colour: red and blue squares
    rgb = np.asarray(Image.open(trained / "reconstructions.png").convert("RGB")).astype(int)
    red = (rgb[..., 0] - rgb[..., 2] > 100).sum()
    blue = (rgb[..., 2] - rgb[..., 0] > 100).sum()
    assert red > 50 and blue > 50, (red, blue)
    assert "bits_per_dim" in (trained / "report.md").read_text()


def test_a_density_of_8_bit_data_adds_8_bits_per_dimension(tmp_path, capsys):
    images, run = _folder(tmp_path / "images", n=6), tmp_path / "run"
    argv = ["train", "--dataset", str(images), "--likelihood", "gaussian", "--hidden", "16"]
    argv += ["--z-dim", "2", "--epochs", "1", "--eval-samples", "5", "--no-progress"]
    assert main([*argv, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--num-samples", "5", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    expected = -metrics["log_likelihood"] / (360 * math.log(2)) + 8
    assert metrics["bits_per_dim"] == pytest.approx(expected, rel=1e-9)
    assert metrics["bits_per_dim_basis"].startswith("density of 8-bit data")


def test_mixed_sizes_need_image_size_and_train_with_it(tmp_path, capsys):
    images = _folder(tmp_path / "images", n=4)
    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(images / "red" / "odd.png")
    out = tmp_path / "run"
    argv = ["train", "--dataset", str(images), "--net", "conv", "--epochs", "1"]
    _one_line_error(capsys, [*argv, "--out", str(out)], "pass --image-size H[,W]", out)
    argv += ["--image-size", "8,12", "--channels", "4", "--hidden", "8", "--z-dim", "2"]
    assert main([*argv, "--eval-samples", "2", "--no-progress", "--out", str(out)]) == 0
    doc = json.loads((out / "config.json").read_text())
    assert doc["program"]["kwargs"]["image_shape"] == [3, 8, 12]
    assert doc["data"]["image_size"] == [8, 12], "evaluate reloads the images at that size"
    capsys.readouterr()
    assert main(["evaluate", str(out), "--num-samples", "2", "--json"]) == 0


@pytest.mark.parametrize("kind", ["empty", "unreadable", "too small"])
def test_a_bad_folder_is_one_clear_line(tmp_path, capsys, kind):
    images, out = tmp_path / "images", tmp_path / "run"
    argv = ["train", "--dataset", str(images), "--net", "conv", "--epochs", "1"]
    if kind == "empty":
        images.mkdir()
        message = "no PNG or JPEG images in"
    elif kind == "unreadable":
        _folder(images, n=4)
        (images / "red" / "broken.png").write_bytes(b"not a png")
        message = "broken.png"
    else:
        _folder(images, n=4)
        argv += ["--channels", "4,4,4,4"]
        message = "too small for 4 stride-2 convolutions"
    _one_line_error(capsys, [*argv, "--out", str(out)], message, out)
