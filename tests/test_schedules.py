"""Learning-rate schedules: the IWAE paper's stages, cosine, plateau; saved and resumed."""

from __future__ import annotations

import math

import pytest
import torch

from ppl_vae import build_vae, fit
from ppl_vae.training.checkpoint import CheckpointError
from ppl_vae.training.schedules import Schedule, iwae_factor


def test_iwae_stages_last_3_to_the_i_epochs_at_10_to_the_minus_i_over_7():
    factors = [iwae_factor(e) for e in range(3280)]
    stages = [round(-7 * math.log10(f)) for f in factors]
    assert [stages.count(i) for i in range(8)] == [3**i for i in range(8)]
    assert stages == sorted(stages)
    assert factors[-1] == pytest.approx(10 ** (-7 / 7))


def _data():
    return torch.rand(60, 12, generator=torch.Generator().manual_seed(0)).bernoulli()


def _vae():
    torch.manual_seed(0)
    return build_vae(12, hidden=(8,), z_dim=2)


SETTINGS = {"batch_size": 20, "lr": 0.01, "progress": False}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("iwae", lambda e, n: iwae_factor(e)),
        ("cosine", lambda e, n: (1 + math.cos(math.pi * e / n)) / 2),
        ("constant", None),
    ],
)
def test_each_epoch_trains_at_the_schedule_s_rate(name, expected):
    x = _data()
    result = fit(_vae(), x, x[:20], epochs=6, lr_schedule=name, **SETTINGS)
    if expected is None:
        assert all("lr" not in h for h in result.history)
        return
    rates = [h["lr"] for h in result.history]
    assert rates == pytest.approx([0.01 * expected(e, 6) for e in range(6)], rel=1e-9)


def test_plateau_halves_after_five_epochs_without_improvement():
    param = torch.nn.Parameter(torch.zeros(1))
    schedule = Schedule("plateau", torch.optim.Adam([param], lr=1.0), epochs=100)
    rates = []
    for loss in [3.0, 2.0] + [2.5] * 7:
        schedule.step(loss)
        rates.append(schedule.lr)
    assert rates == [1.0] * 7 + [0.5, 0.5]


@pytest.mark.parametrize("name", ["iwae", "cosine", "plateau"])
def test_a_schedule_resumed_mid_run_equals_the_uninterrupted_run(tmp_path, name):
    x = _data()
    whole_vae = _vae()
    whole = fit(whole_vae, x, x[:20], epochs=6, lr_schedule=name, **SETTINGS)

    def stop(epoch, step, loss):
        if (epoch, step) == (2, 1):
            raise KeyboardInterrupt

    vae = _vae()
    with pytest.raises(KeyboardInterrupt):
        fit(vae, x, x[:20], epochs=6, lr_schedule=name, out=tmp_path, callback=stop, **SETTINGS)
    vae = _vae()
    resumed = fit(vae, x, x[:20], epochs=6, lr_schedule=name, out=tmp_path, resume=True,
                  **SETTINGS)  # fmt: skip
    assert [h.get("lr") for h in resumed.history] == [h.get("lr") for h in whole.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    pairs = zip(whole_vae.state_dict().items(), vae.state_dict().items(), strict=True)
    for (key, a), (_, b) in pairs:
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=key)


def test_a_changed_lr_under_a_schedule_and_a_schedule_with_svi_are_refused(tmp_path):
    x = _data()
    fit(_vae(), x, epochs=1, lr_schedule="iwae", out=tmp_path, **SETTINGS)
    with pytest.raises(CheckpointError, match="resume with --lr 0.01"):
        fit(_vae(), x, epochs=2, lr_schedule="iwae", out=tmp_path, resume=True,
            **{**SETTINGS, "lr": 0.001})  # fmt: skip
    with pytest.raises(ValueError, match="use it with --engine fast"):
        fit(_vae(), x, epochs=1, lr_schedule="cosine", engine="svi", **SETTINGS)
