"""Data-parallel fit and sharded log p(x) over two CPU processes (gloo), against one process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ppl_vae import fit, log_likelihood
from ppl_vae.cli import main
from ppl_vae.runtime.distributed import World, join, leave, shard_rows
from ppl_vae.training.batching import LoaderFeed

SIZE = 2


class PointAE(nn.Module):
    """An autoencoder as a Pyro program whose guide is a point mass: its loss (log p(x, z) at
    z = enc(x)) has no random draw, so two processes must reproduce one to float rounding."""

    def __init__(self, x_dim: int = 6, z_dim: int = 2, stochastic: bool = False) -> None:
        super().__init__()
        self.enc, self.dec = nn.Linear(x_dim, 2 * z_dim), nn.Linear(z_dim, x_dim)
        self.z_dim, self.stochastic = z_dim, stochastic

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.z_dim]).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        loc, log_scale = self.enc(x).chunk(2, -1)
        with pyro.plate("data", len(x)):
            if self.stochastic:
                pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
            else:
                pyro.sample("z", dist.Delta(loc).to_event(1))


def _data(n: int = 50) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(1))


def _program(stochastic: bool) -> PointAE:
    torch.manual_seed(0)
    return PointAE(stochastic=stochastic)


def _settings(**extra):
    return {"epochs": 3, "batch_size": 7, "lr": 0.05, "progress": False, "seed": 3, **extra}


def _estimate(distributed: bool):
    """log p(x) of 23 points in batches of 4 (6 batches: 3 per process with 2)."""
    program = _program(stochastic=True)
    x = _data(23)
    kw = {"num_samples": 64, "batch_size": 4, "seed": 5, "diagnostics": True}
    return log_likelihood(program.model, program.guide, x, distributed=distributed, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, job: str, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    join("gloo", rank=rank, world_size=SIZE)
    pyro.enable_validation(True)
    folder = Path(folder)
    try:
        if job == "loglik":
            torch.save(_estimate(distributed=True), folder / f"loglik-{rank}.pt")
            return
        # "fit-4", "fit-interrupted", "fit-resumed": a stochastic guide; ":point" a point mass
        base, _, kind = job.partition(":")
        short = base in ("fit-point", "fit-dataset")
        program = _program(stochastic=not short and kind != "point")
        data = TensorDataset(_data()) if base == "fit-dataset" else _data()

        def stop_rank_1(epoch, step, loss):  # Ctrl-C that reaches one process only
            if base == "fit-interrupted" and rank == 1 and (epoch, step) == (1, 2):
                os.kill(os.getpid(), signal.SIGINT)

        out = None if short else folder / ("ref" if base == "fit-4" else "run")
        try:
            result = fit(
                program,
                data,
                _data(11) if base == "fit-point" else None,
                out=out,
                resume=base == "fit-resumed",
                callback=stop_rank_1,
                **_settings(epochs=3 if short else 4),
            )
        except KeyboardInterrupt:
            return
        state = {"state": program.state_dict(), "history": result.history}
        torch.save(state, folder / f"{job}-{rank}.pt")
    finally:
        leave()


def _run(job: str, folder: Path) -> None:
    mp.start_processes(
        _worker, args=(_free_port(), job, str(folder)), nprocs=SIZE, start_method="spawn"
    )


def _assert_same_state(a: dict, b: dict, atol: float, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=f"{what}: {key}")


def test_shards_cover_every_row_once_with_sizes_within_one():
    for n in range(0, 12):
        for size in (1, 2, 3, 5):
            parts = [shard_rows(n, World(r, size)) for r in range(size)]
            rows = [i for p in parts for i in range(n)[p]]
            assert rows == list(range(n)), (n, size)
            lengths = [p.stop - p.start for p in parts]
            assert max(lengths) - min(lengths) <= 1, (n, size, lengths)


@pytest.mark.parametrize("job", ["fit-point", "fit-dataset"])
def test_two_processes_train_as_one_on_the_same_global_batches(tmp_path, job):
    # batches of 7 rows split 4 + 3, the last of the 50 rows (1 row) 1 + 0; from a tensor,
    # or from a Dataset (each process loads only its rows of each batch)
    _run(job, tmp_path)
    program = _program(stochastic=False)
    data = TensorDataset(_data()) if job == "fit-dataset" else _data()
    val = _data(11) if job == "fit-point" else None  # validation over 2 processes: 6 + 5 rows
    single = fit(program, data, val, **_settings())
    ranks = [torch.load(tmp_path / f"{job}-{r}.pt") for r in range(SIZE)]
    _assert_same_state(ranks[0]["state"], ranks[1]["state"], 0.0, "rank 0 against rank 1")
    _assert_same_state(program.state_dict(), ranks[0]["state"], 1e-5, "1 process against 2")
    for one, two in zip(single.history, ranks[0]["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_reconstruction", "val_kl"):
            if key in one or key in two:
                assert one[key] == pytest.approx(two[key], abs=1e-4), (key, one, two)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The folder of job ``"fit-4" + kind``, two processes' uninterrupted 4-epoch run, run once
    a module: the resume test compares with it and the checkpoint test opens a copy of it."""
    folders: dict[str, Path] = {}

    def folder(kind: str) -> Path:
        if kind not in folders:
            folders[kind] = tmp_path_factory.mktemp("fit-4" + kind.replace(":", "-"))
            _run(f"fit-4{kind}", folders[kind])
        return folders[kind]

    return folder


@pytest.mark.parametrize("kind", ["", ":point"])
def test_two_processes_resumed_after_an_interrupt_equal_their_uninterrupted_run(
    tmp_path, kind, uninterrupted
):
    reference = uninterrupted(kind)
    _run(f"fit-interrupted{kind}", tmp_path)  # rank 1 alone gets Ctrl-C after step 2 of epoch 2
    assert not list(tmp_path.glob("fit-interrupted*.pt")), "rank 0 did not stop"
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["processes"] == SIZE and len(saved["rng_ranks"]) == SIZE
    # both processes stopped after the next step, the first whose all-reduce carried the flag
    assert (saved["train"]["epoch"], saved["train"]["step_in_epoch"]) == (1, 4)
    _run(f"fit-resumed{kind}", tmp_path)
    whole = torch.load(reference / f"fit-4{kind}-0.pt")
    resumed = torch.load(tmp_path / f"fit-resumed{kind}-0.pt")
    _assert_same_state(whole["state"], resumed["state"], 0.0, "resumed against uninterrupted")
    losses = [[h["train_loss"] for h in r["history"]] for r in (whole, resumed)]
    assert losses[0] == losses[1]
    if kind == ":point":  # and, with no random draws, against one process on the same batches
        program = _program(stochastic=False)
        fit(program, _data(), **_settings(epochs=4))
        _assert_same_state(program.state_dict(), resumed["state"], 1e-5, "1 process against 2")


def test_a_checkpoint_of_two_processes_is_refused_by_one_and_opened_by_any(
    tmp_path, uninterrupted
):
    shutil.copytree(uninterrupted("") / "ref", tmp_path / "ref")
    with pytest.raises(Exception, match="2 processes and this one has 1"):
        fit(_program(True), _data(), out=tmp_path / "ref", resume=True, **_settings(epochs=5))
    from ppl_vae.cli.runs import open_run

    program = _program(True)
    open_run(tmp_path / "ref", program=program)
    whole = torch.load(uninterrupted("") / "fit-4-0.pt")
    _assert_same_state(whole["state"], program.state_dict(), 0.0, "opened in one process")


def test_log_likelihood_sharded_over_two_processes_equals_one_point_for_point(tmp_path):
    _run("loglik", tmp_path)
    one = _estimate(distributed=False)
    for rank in range(SIZE):
        two = torch.load(tmp_path / f"loglik-{rank}.pt", weights_only=False)
        for name in ("log_px", "stderr", "ess", "pareto_k"):
            torch.testing.assert_close(
                getattr(two, name), getattr(one, name), atol=0, rtol=0, msg=f"rank {rank} {name}"
            )


def _torchrun(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(SIZE), "-m", "ppl_vae.cli", *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_under_torchrun_trains_and_evaluates_as_one_process_does(tmp_path, capsys):
    done = _torchrun(
        "train", "--dataset", "digits", "--epochs", "1", "--eval-samples", "50",
        "--no-progress", "--out", "two", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "over 2 processes" in done.stdout and done.stdout.count("test log p(x) =") == 1
    saved = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert saved["processes"] == SIZE
    flags = ("evaluate", "two", "--num-samples", "64", "--json")
    two = _torchrun(*flags, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    capsys.readouterr()
    # one process: this one (a process of its own would only add an interpreter's start-up)
    assert main(["evaluate", str(tmp_path / "two"), *flags[2:]]) == 0
    a, b = json.loads(capsys.readouterr().out), json.loads(two.stdout)  # rank 0 alone prints
    for key in ("log_likelihood", "elbo", "stderr", "ess_fraction", "num_points"):
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-6), key


def test_cli_under_torchrun_refuses_what_runs_in_one_process(tmp_path):
    done = _torchrun("sample", "nowhere", cwd=tmp_path)
    assert done.returncode != 0
    assert "runs in one process; run it without torchrun" in done.stderr


def test_a_shuffling_loader_without_a_generator_is_refused_for_several_processes():
    data = TensorDataset(_data())
    with pytest.raises(ValueError, match="needs a generator seeded alike in every process"):
        LoaderFeed(DataLoader(data, batch_size=5, shuffle=True), 5).check_shared_order()
    seeded = DataLoader(data, batch_size=5, shuffle=True, generator=torch.Generator())
    LoaderFeed(seeded, 5).check_shared_order()
    LoaderFeed(DataLoader(data, batch_size=5), 5).check_shared_order()
