"""Walks in latent space: interpolation and traversals, and their commands."""

import pytest
import torch
from PIL import Image

from ppl_vae import build_vae
from ppl_vae.cli import main
from ppl_vae.evaluation.walks import interpolate, interpolation_rows, traversal_rows


def test_interpolation_endpoints_and_the_sphere():
    z0, z1 = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 5.0, 0.0])  # both of norm 5
    for kind in ("linear", "spherical"):
        path = interpolate(z0, z1, 7, kind)
        assert path.shape == (7, 3)
        torch.testing.assert_close(path[0], z0)
        torch.testing.assert_close(path[-1], z1)
    norms = interpolate(z0, z1, 7, "spherical").norm(dim=1)
    torch.testing.assert_close(norms, torch.full((7,), 5.0), atol=1e-5, rtol=0)
    assert interpolate(z0, z1, 7, "linear").norm(dim=1)[3] < 4.0, "the linear midpoint sinks"
    same = interpolate(z0, 2 * z0, 4, "spherical")  # parallel: falls back to linear
    torch.testing.assert_close(same[1], z0 * 4 / 3)
    with pytest.raises(ValueError, match="at least 2"):
        interpolate(z0, z1, 1)


def test_interpolation_rows_decode_the_two_inputs_latent_means():
    torch.manual_seed(0)
    vae = build_vae(6, z_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((2, 6), 0.5))
    rows = interpolation_rows(vae, x[0], x[1], steps=5, kind="spherical")
    ends = vae.decode(vae.encode(x).mean)
    torch.testing.assert_close(rows[[0, -1]], ends)


def test_traversal_orders_dimensions_by_use_and_varies_one_at_a_time():
    torch.manual_seed(0)
    vae = build_vae(6, z_dim=3, hidden=(8,))
    data = torch.bernoulli(torch.full((40, 6), 0.5))
    rows, order = traversal_rows(vae, data[0], data, values=(-1, 0, 1), dims=2)
    spread = vae.encode(data).mean.var(0)
    assert order == spread.argsort(descending=True).tolist()[:2]
    assert rows.shape == (2 * 3, 6)
    z = vae.encode(data[:1]).mean[0].clone()
    z[order[0]] = 1.0
    torch.testing.assert_close(rows[2], vae.decode(z.unsqueeze(0))[0])


def test_interpolate_and_traverse_commands_write_pictures(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--preset", "small", "--epochs", "1"]
    assert main([*argv, "--eval-samples", "5", "--no-progress", "--out", str(tmp_path)]) == 0
    assert main(["interpolate", str(tmp_path), "--from", "3", "--to", "7", "--steps", "8"]) == 0
    with Image.open(tmp_path / "interpolate.png") as im:
        assert im.size[0] > 100 and im.size[1] > 30
    assert main(["traverse", str(tmp_path), "--dims", "4", "--values=-2,0,2"]) == 0
    assert (tmp_path / "traverse.png").stat().st_size > 1000
    assert main(["attribute", str(tmp_path), "--from-label", "3", "--to-label", "8"]) == 0
    assert (tmp_path / "attribute.png").stat().st_size > 1000
    assert main(["latents", str(tmp_path)]) == 0
    with Image.open(tmp_path / "latents.png") as im:
        assert im.size == (600, 504)  # 5 x 4.2 inches at 120 dpi
    capsys.readouterr()
    assert main(["interpolate", str(tmp_path), "--from", "9999"]) == 2
    assert "--from/--to take rows 0 to 179" in capsys.readouterr().err


def test_attribute_vectors_move_from_one_label_group_toward_the_other():
    from ppl_vae.evaluation.walks import attribute_rows

    torch.manual_seed(0)
    vae = build_vae(6, z_dim=3, hidden=(8,))
    data = torch.bernoulli(torch.full((60, 6), 0.5))
    labels = torch.arange(60) % 3
    rows = attribute_rows(vae, data[0], data, labels, source=0, target=2, steps=4)
    means = vae.encode(data).mean
    direction = means[labels == 2].mean(0) - means[labels == 0].mean(0)
    z0 = vae.encode(data[:1]).mean[0]
    torch.testing.assert_close(rows[0], vae.decode(z0.unsqueeze(0))[0])
    torch.testing.assert_close(rows[-1], vae.decode((z0 + direction).unsqueeze(0))[0])
    with pytest.raises(ValueError, match="no point of the data has the target label 7"):
        attribute_rows(vae, data[0], data, labels, source=0, target=7)


def test_report_links_only_files_that_exist(tmp_path):
    import re

    argv = ["train", "--dataset", "digits", "--preset", "small", "--epochs", "1"]
    assert main([*argv, "--eval-samples", "5", "--no-progress", "--out", str(tmp_path)]) == 0
    assert main(["report", str(tmp_path), "--num-samples", "10", "--limit", "60"]) == 0
    text = (tmp_path / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) >= 6, links
    assert all((tmp_path / name).is_file() for name in links), links
    for needed in ("log_likelihood", "active_units", "mutual_information", "ELBO surgery"):
        assert needed in text, needed


def test_a_row_outside_the_split_is_one_line(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--preset", "small", "--epochs", "1"]
    assert main([*argv, "--eval-samples", "5", "--no-progress", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    for command in (["traverse"], ["attribute", "--from-label", "3", "--to-label", "8"]):
        assert main([command[0], str(tmp_path), *command[1:], "--row", "999"]) == 2
        assert "--row takes rows 0 to 179 of the split, got 999" in capsys.readouterr().err
