"""Devices: training, log p(x) and the CLI on every device this machine has (CUDA and MPS tests
are skipped, with the reason, where there is none); checkpoints move between devices."""

from __future__ import annotations

import json

import pytest
import torch

from ppl_vae import build_vae, fit, log_likelihood
from ppl_vae.cli import main
from ppl_vae.cli.runs import open_run

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
MPS = pytest.mark.skipif(not torch.backends.mps.is_available(), reason="no MPS on this machine")
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=CUDA),
    pytest.param("cuda:0", marks=CUDA),
    pytest.param("mps", marks=MPS),
]


def _data(n: int = 60, d: int = 12) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(0)).bernoulli()


@pytest.mark.parametrize("device", DEVICES)
def test_fit_and_log_likelihood_follow_the_parameters_device_and_dtype(device, tmp_path):
    dtype = torch.float32 if device == "mps" else torch.float64
    torch.manual_seed(0)
    vae = build_vae(12, hidden=(16,), z_dim=3).to(device=device, dtype=dtype)
    x = _data()  # float32 on the CPU: fit casts it
    result = fit(vae, x, x[:20], epochs=2, batch_size=20, progress=False, out=tmp_path / "run")
    assert all(p.device.type == torch.device(device).type for p in vae.parameters())
    assert all(p.dtype == dtype for p in vae.parameters())
    assert len(result.history) == 2
    lp = log_likelihood(vae.model, vae.guide, x.to(device, dtype), num_samples=50, seed=1)
    assert lp.shape == (60,) and lp.dtype == dtype and lp.device.type == torch.device(device).type
    # the same weights on the CPU give the same estimate, to the device's rounding
    cpu = open_run(tmp_path / "run", device="cpu").program
    on_cpu = log_likelihood(cpu.model, cpu.guide, x.to(dtype), num_samples=50, seed=1)
    if device == "cpu":
        torch.testing.assert_close(lp, on_cpu, atol=0, rtol=0)
    else:  # other random streams on another device: compare the means within their spread
        assert abs(lp.mean().item() - on_cpu.mean().item()) < 0.5


def test_a_run_recorded_on_a_gpu_opens_on_the_cpu_of_a_machine_without_one(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--eval-samples", "20",
                 "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    doc = json.loads((out / "config.json").read_text())
    doc["run"]["device"] = "cuda:0"  # as a GPU run records it
    (out / "config.json").write_text(json.dumps(doc))
    capsys.readouterr()
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so the run opens there")
    assert main(["evaluate", str(out), "--num-samples", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_points"] == 180


@pytest.mark.parametrize(
    "device, says",
    [
        ("banana", "is not a torch device; use cpu, cuda, cuda:N or mps"),
        ("xpu", "ppl_vae runs on cpu, cuda, cuda:N or mps"),
        pytest.param(
            "cuda",
            "this machine has no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
        pytest.param(
            "cuda:99",
            "there are",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ),
    ],
)
@pytest.mark.parametrize("command", ["train", "evaluate", "sample"])
def test_a_device_that_is_not_there_is_one_line(tmp_path, capsys, device, says, command):
    if command == "train":
        argv = ["train", "--dataset", "digits", "--out", str(tmp_path / "new")]
    else:
        run = tmp_path / "run"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"run": {"device": "cpu"}}))
        argv = [command, str(run)]
    assert main([*argv, "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err


@CUDA
def test_cli_trains_and_evaluates_on_cuda(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--eval-samples", "50",
                 "--no-progress", "--device", "cuda", "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(out), "--device", "cpu", "--num-samples", "50", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_points"] == 180
