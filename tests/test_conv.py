"""The convolutional networks: their shapes on grey, colour and odd-sized images, the built-in
models built on them, a user's own program with them, and ``ppl-vae train --net conv``."""

from __future__ import annotations

import json

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae import build_vae, fit
from ppl_vae.cli import main
from ppl_vae.models.build import build_program
from ppl_vae.models.conv import ConvNet, DeconvNet, conv_sizes

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 9, 5), (1, 7, 12), (2, 4, 4)]


@pytest.mark.parametrize("shape", SHAPES)
def test_conv_net_maps_rows_and_images_of_any_shape_to_vectors(shape):
    net = ConvNet(shape, 6, channels=(4, 8), hidden=(16,))
    d = int(np.prod(shape))
    rows = torch.rand(5, d)
    out = net(rows)
    assert out.shape == (5, 6), out.shape
    # the same images given as (N, C, H, W), and with extra leading dimensions
    torch.testing.assert_close(net(rows.reshape(5, *shape)), out, rtol=0, atol=0)
    assert net(rows.expand(3, 5, d)).shape == (3, 5, 6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 3])
def test_deconv_net_restores_the_exact_image_shape_for_each_parameter(shape, k):
    net = DeconvNet(4, shape, k, channels=(4, 8), hidden=(16,))
    d = int(np.prod(shape))
    assert net(torch.randn(7, 4)).shape == (7, k * d)
    assert net(torch.randn(2, 7, 4)).shape == (2, 7, k * d)  # particles (K, N, z)
    # the last transposed convolution's map has exactly the image's height and width
    h = net.dense(torch.randn(1, 4)).reshape(1, *net.start)
    assert net.deconvs(h).shape == (1, k * shape[0], shape[1], shape[2])


def test_the_parameter_layout_is_parameter_major():
    """Output block j (of C*H*W numbers) depends only on transposed-convolution channels
    j*C .. j*C + C - 1: the layout the likelihood heads read with unflatten(-1, (k, D))."""
    shape, k = (3, 6, 6), 2
    net = DeconvNet(4, shape, k, channels=(4,), hidden=())
    last = net.deconvs[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.arange(k * shape[0], dtype=torch.float32))
    out = net(torch.randn(1, 4)).unflatten(-1, (k, 3, 6, 6))[0]
    for j in range(k):
        for c in range(3):
            assert torch.all(out[j, c] == j * 3 + c), (j, c)


def test_an_image_too_small_for_the_convolutions_is_one_clear_error():
    assert conv_sizes((1, 8, 8), 3)[-1] == (1, 1)
    with pytest.raises(ValueError, match=r"a 8x8 image is too small for 4 stride-2"):
        ConvNet((1, 8, 8), 2, channels=(4, 4, 4, 4))
    with pytest.raises(ValueError, match="rows of 64 features"):
        ConvNet((1, 8, 8), 2, channels=(4,))(torch.zeros(3, 65))


MODELS = {
    "gaussian": {},
    "flow guide": {"guide": "flow"},
    "vamp": {"prior": "vamp", "pseudo_inputs": 5},
    "flow prior": {"prior": "flow"},
    "two layers": {"top_z_dim": 3, "top_hidden": (16,)},
    "two layers top-down": {"top_z_dim": 3, "top_hidden": (16,), "guide_direction": "top-down"},
}


@pytest.mark.parametrize("options", MODELS.values(), ids=MODELS.keys())
def test_every_guide_prior_and_depth_trains_on_colour_images(options):
    torch.manual_seed(0)
    shape = (3, 9, 5)
    vae = build_vae(
        135, z_dim=4, hidden=(32,), net="conv", image_shape=shape, channels=(4, 8), **options
    )
    x = torch.bernoulli(torch.rand(6, 135))
    loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert torch.isfinite(loss)
    convs = [m for m in vae.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert len(convs) == 4, "two convolutions up, two transposed down"
    for name, p in vae.named_parameters():
        if p.requires_grad and "pseudo" not in name:
            assert p.grad is not None, f"no gradient reaches {name}"
    assert vae.sample(3).shape == (3, 135)
    assert vae.reconstruct(x).shape == (6, 135)
    # the recipe rebuilds the same networks, so a run folder opens again
    again = build_program(vae.recipe)
    shapes = {k: v.shape for k, v in vae.state_dict().items()}
    assert {k: v.shape for k, v in again.source.state_dict().items()} == shapes


def test_a_wrong_image_shape_or_the_polymodal_latent_is_refused():
    with pytest.raises(ValueError, match="have 75 values but the data have 135"):
        build_vae(135, net="conv", image_shape=(3, 5, 5))
    with pytest.raises(ValueError, match="needs the images' shape"):
        build_vae(135, net="conv")
    with pytest.raises(ValueError, match="polymodal latent brings its own MLP guide"):
        build_vae(64, net="conv", image_shape=(8, 8), prior="polymodal")


class UserConvVAE(nn.Module):
    """A user's own Pyro program on images of shape (N, 1, H, W), with the conv modules."""

    def __init__(self, shape=(1, 8, 8), z_dim=2):
        super().__init__()
        self.shape, self.z_dim = shape, z_dim
        self.enc = ConvNet(shape, 2 * z_dim, channels=(8,), hidden=(32,), activation="relu")
        self.dec = DeconvNet(z_dim, shape, 1, channels=(8,), hidden=(32,), activation="relu")

    def model(self, x):
        pyro.module("user_conv", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            logits = self.dec(z).reshape(-1, *self.shape)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x)

    def guide(self, x):
        pyro.module("user_conv", self)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_a_users_own_pyro_program_with_the_conv_modules_trains_with_fit():
    torch.manual_seed(0)
    # two kinds of 8x8 images: a bright top half or a bright left half
    top = torch.zeros(1, 8, 8)
    top[:, :4] = 1
    images = torch.stack([top, top.transpose(1, 2)] * 100)
    x = torch.bernoulli(images * 0.9 + 0.05)
    program = UserConvVAE()
    result = fit(program, x, epochs=6, batch_size=25, lr=3e-3, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0] - 5, f"the loss did not fall: {losses}"


def test_cli_trains_evaluates_and_reports_a_conv_vae(tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--dataset", "digits", "--net", "conv", "--channels", "8,16", "--hidden", "32"]
    code = main(["train", *flags, "--epochs", "1", "--eval-samples", "5", "--no-progress"]
                + ["--out", str(run)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    recipe = json.loads((run / "config.json").read_text())["program"]["kwargs"]
    assert (recipe["net"], recipe["image_shape"], recipe["channels"]) == (
        "conv",
        [1, 8, 8],
        [8, 16],
    )
    assert (run / "samples.png").is_file() and (run / "reconstructions.png").is_file()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--num-samples", "5", "--limit", "20", "--json"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["log_likelihood"])
    assert main(["report", str(run), "--num-samples", "5", "--limit", "20"]) == 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--net", "conv", "--channels", "4,4,4,4"], "a 8x8 image is too small for 4 stride-2"),
        (["--channels", "8"], "--channels sizes the convolutions of --net conv"),
        (["--net", "conv", "--channels", "8,x"], "--channels takes integers like 32,64"),
    ],
)
def test_cli_refuses_a_network_the_images_cannot_take_in_one_line(
    tmp_path, capsys, flags, message
):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "digits", *flags, "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists(), "nothing is written for bad input"


def test_cli_refuses_conv_on_data_without_an_image_shape(tmp_path, capsys):
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).random((50, 10)).astype("float32"))
    out = tmp_path / "run"
    code = main(["train", "--dataset", str(tmp_path / "rows.npy"), "--net", "conv",
                 "--likelihood", "gaussian", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--net conv needs images" in err, err
    assert not out.exists()


def test_the_default_conv_vae_uses_its_code():
    """With the conv defaults (ELU, one linear layer of 256, He initialisation) the VAE uses z
    on real digits after a few epochs; with PyTorch's default initialisation and softplus it
    learned to ignore z (no active unit, the test ELBO of the mean image)."""
    from ppl_vae import load_dataset
    from ppl_vae.evaluation.analysis import active_units

    data = load_dataset("digits")
    torch.manual_seed(0)
    vae = build_vae(64, z_dim=8, net="conv", image_shape=data.image_shape, channels=(16, 32))
    fit(vae, data, epochs=5, progress=False, seed=0)
    count, _ = active_units(vae, data.test)
    assert count >= 3, f"only {count} of 8 latent dimensions active: the VAE ignores z"


def test_compile_auto_leaves_a_convolutional_program_eager():
    """Compiled conv steps were slower than eager ones on the CPU (benchmarks/conv.py), so
    ``compile="auto"`` keeps them eager; an MLP program on long epochs still compiles."""
    from ppl_vae.program import as_program
    from ppl_vae.runtime.compiler import compiler_available
    from ppl_vae.training.engines import FastEngine
    from ppl_vae.training.epoch import graph_mode

    cpu = torch.device("cpu")
    with pyro.validation_enabled(False):
        assert graph_mode("auto", 600, cpu, convolutional=True) is None
        expected = "compile" if compiler_available() else None
        assert graph_mode("auto", 600, cpu, convolutional=False) == expected
        assert graph_mode("compile", 600, cpu, convolutional=True) == "compile", "asked for"
    conv = build_vae(64, z_dim=2, net="conv", image_shape=(8, 8), channels=(4,))
    mlp = build_vae(64, z_dim=2, hidden=(8,))
    objective = pyro.infer.Trace_ELBO()
    for vae, want in ((conv, True), (mlp, False)):
        program = as_program(vae)
        x = torch.bernoulli(torch.rand(3, 64))
        vae.model(x), vae.guide(x)  # parameters found as fit finds them
        program.parameters = {n: p for n, p in vae.named_parameters()}
        assert FastEngine(program, objective, 1e-3, 1.0).convolutional is want


def test_a_dataset_of_image_tensors_trains_and_is_scored_without_flattening_by_hand():
    """Images (N, C, H, W) from a torch Dataset go into the built-in models as they are: the
    model flattens them to the rows its likelihood observes."""
    from torch.utils.data import TensorDataset

    from ppl_vae import log_likelihood

    torch.manual_seed(0)
    images = torch.rand(60, 3, 9, 5)
    vae = build_vae(
        135, z_dim=3, net="conv", image_shape=(3, 9, 5), channels=(4, 8),
        likelihood="continuous-bernoulli",
    )  # fmt: skip
    result = fit(vae, TensorDataset(images), epochs=2, batch_size=20, progress=False)
    assert all(np.isfinite(h["train_loss"]) for h in result.history)
    torch.manual_seed(1)
    as_images = log_likelihood(vae.model, vae.guide, images[:5], num_samples=7, seed=0)
    as_rows = log_likelihood(
        vae.model, vae.guide, images[:5].reshape(5, -1), num_samples=7, seed=0
    )
    torch.testing.assert_close(as_images, as_rows, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"expects data of shape \(N, 135\)"):
        vae.model(torch.rand(4, 3, 9, 6))
