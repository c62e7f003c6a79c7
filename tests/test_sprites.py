"""The sprites dataset: every factor combination once, images that follow their factors."""

import torch

from ppl_vae.data.datasets import load_dataset
from ppl_vae.data.sprites import FACTORS, make_sprites
from ppl_vae.evaluation.analysis import mutual_information_gap


def test_every_combination_once_and_the_pictures_follow_the_factors():
    x, y = make_sprites(size=32, scales=3, orientations=4, positions=5)
    assert x.shape == (3 * 3 * 4 * 5 * 5, 1024) and y.shape == (len(x), len(FACTORS))
    assert len({tuple(r) for r in y.tolist()}) == len(x), "a combination appears twice"
    assert set(x.unique().tolist()) == {0.0, 1.0} and bool((x.sum(1) > 0).all())
    img = x.reshape(-1, 32, 32)
    cols = torch.arange(32.0)
    centroid_x = (img.sum(1) * cols).sum(1) / img.sum((1, 2))
    for p in range(4):  # moving right along the x factor moves the ink right
        left, right = centroid_x[y[:, 3] == p], centroid_x[y[:, 3] == p + 1]
        assert bool(right.mean() > left.mean() + 2)
    area = x.sum(1)
    same = (y[:, 0] == 0) & (y[:, 2] == 0)
    small, large = area[same & (y[:, 1] == 0)].mean(), area[same & (y[:, 1] == 2)].mean()
    assert large > 3 * small, (small, large)  # scale 0.5 -> 1: four times the area
    upright = x[(y[:, 0] == 0) & (y[:, 1] == 2) & (y[:, 3] == 2) & (y[:, 4] == 2)]
    assert torch.equal(upright[0], upright[2]), "a square turned by 180 degrees is the same"


def test_load_dataset_sprites_keeps_the_factors_as_labels():
    d = load_dataset("sprites", binarization="none")
    assert d.image_shape == (32, 32) and d.binary
    assert len(d.train) + len(d.val) + len(d.test) == 6144
    labels = torch.cat([d.train_labels, d.val_labels, d.test_labels])
    assert len({tuple(r) for r in labels.tolist()}) == 6144
    # on the whole grid the factors are independent, so they are their own perfect code
    mig, _ = mutual_information_gap(labels.float(), labels)
    assert abs(mig - 1) < 1e-9, mig


def test_evaluate_reports_surgery_active_units_and_mig_on_sprites(tmp_path, capsys):
    import json

    from ppl_vae.cli import main

    argv = ["train", "--dataset", "sprites", "--preset", "small", "--epochs", "1"]
    assert main([*argv, "--eval-samples", "5", "--no-progress", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path), "--num-samples", "5", "--limit", "200", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["mig"] <= 1 and 0 <= out["active_units"] <= 8
    total = out["marginal_kl"] + out["mutual_information"]
    assert abs(out["average_kl"] - total) < 1e-6
    assert out["mutual_information"] <= out["log_n"] + 4 * out["mutual_information_se"]


def test_the_real_dsprites_file_is_read_with_the_same_factor_names(tmp_path):
    import numpy as np
    import pytest

    rng = np.random.default_rng(0)
    imgs = (rng.random((40, 64, 64)) > 0.9).astype(np.uint8)
    classes = np.stack([np.zeros(40), *(rng.integers(0, k, 40) for k in (3, 6, 40, 32, 32))], 1)
    np.savez(
        tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz",
        imgs=imgs,
        latents_classes=classes.astype(np.int64),
    )
    d = load_dataset("dsprites", data_dir=tmp_path, binarization="none")
    assert d.image_shape == (64, 64) and d.x_dim == 4096
    assert (len(d.train), len(d.val), len(d.test)) == (32, 4, 4)
    labels = torch.cat([d.train_labels, d.val_labels, d.test_labels])
    assert labels.shape == (40, len(FACTORS))
    assert sorted(map(tuple, labels.tolist())) == sorted(map(tuple, classes[:, 1:].tolist()))
    with pytest.raises(FileNotFoundError, match="needs --data-dir"):
        load_dataset("dsprites")
