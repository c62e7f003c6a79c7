"""Faults: kills at random instants, concurrent writers, refused commands, changed settings,
divergence. A run folder survives all of them, and nothing is claimed that was not done."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ppl_vae.cli import main

REPO = Path(__file__).resolve().parent.parent
#: a run of about two seconds of training on the embedded 8x8 digits
TRAIN = ["train", "--dataset", "digits", "--preset", "small", "--epochs", "30"]
TRAIN += ["--eval-samples", "5", "--checkpoint-every", "4", "--no-progress"]


def _spawn(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "ppl_vae.cli", *TRAIN, "--out", str(out), *extra]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _epochs_logged(out: Path) -> int:
    try:
        return len((out / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _final(out: Path) -> dict:
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "program": state["program"],
        "optimizer": state["optimizer"],
        "history": [{k: v for k, v in h.items() if k != "seconds"} for h in lines],
    }


def _assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
def test_kills_at_random_instants_then_resume_equal_the_uninterrupted_run(tmp_path):
    """SIGINT, SIGTERM and SIGKILL, each twice, at random instants while the run trains; each
    time resumed. The end: the same parameters, optimizer state and one log line per epoch."""
    straight = tmp_path / "straight"
    proc = _spawn(straight)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    rng = random.Random(0)
    out = tmp_path / "killed"
    codes = []
    for sig in [signal.SIGINT, signal.SIGTERM, signal.SIGKILL] * 2:
        proc = _spawn(out, "--resume")
        start = _epochs_logged(out)
        deadline = time.monotonic() + 120
        while _epochs_logged(out) <= start and proc.poll() is None:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(sig)
        codes.append((sig.name, proc.wait(timeout=120)))
    proc = _spawn(out, "--resume")
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    # 0: it had finished; -signal: it came while the interpreter started or shut down
    expected = {"SIGINT": 130, "SIGTERM": 143, "SIGKILL": -9}
    ok = [code in (expected[name], 0, -signal.Signals[name].value) for name, code in codes]
    assert all(ok), codes
    assert not list(out.glob(".*.tmp")), "a killed write's temporary file was left behind"
    _assert_same(_final(straight), _final(out))
    assert len(_final(out)["history"]) == 30


def test_a_crash_between_checkpoint_and_log_leaves_one_line_per_epoch(tmp_path, monkeypatch):
    from ppl_vae.training import trainer as train

    argv = ["train", "--dataset", "digits", "--preset", "small", "--epochs", "4"]
    argv += ["--eval-samples", "5", "--no-progress", "--out", str(tmp_path)]
    written = []

    def crash_after_two(self):
        written.append(len(self.state.history))
        if len(self.state.history) == 2:
            raise SystemExit(9)  # as a kill right after the checkpoint's rename
        original(self)

    original = train._Trainer._write_metrics
    monkeypatch.setattr(train._Trainer, "_write_metrics", crash_after_two)
    with pytest.raises(SystemExit):
        main(argv)
    monkeypatch.undo()
    assert _epochs_logged(tmp_path) == 1, "the log lags the checkpoint by the crashed epoch"
    assert main([*argv, "--resume"]) == 0
    epochs = [
        json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2, 3, 4]


def test_a_second_writer_is_refused_naming_the_first(tmp_path, capsys):
    proc = _spawn(tmp_path, "--epochs", "400")
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / ".lock").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no lock was taken"
            time.sleep(0.02)
        assert main([*TRAIN, "--out", str(tmp_path), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"being written by process {proc.pid}" in err, err
    finally:
        proc.kill()
        proc.wait()
    # the killed writer's lock is stale now: the folder can be resumed
    assert main([*TRAIN, "--epochs", "2", "--out", str(tmp_path), "--overwrite"]) == 0


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.fixture(scope="module")
def a_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--dataset", "digits", "--preset", "small", "--epochs", "2"]
    assert main([*argv, "--eval-samples", "5", "--no-progress", "--out", str(out)]) == 0
    return out, argv


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--z-dim", "16"], "program.kwargs.z_dim 8 -> 16"),
        (["--prior", "mixture"], "program.kwargs.prior 'normal' -> 'mixture'"),
        (["--likelihood", "continuous-bernoulli"], "program.kwargs.likelihood"),
        (["--beta", "4"], "fit.beta 1.0 -> 4.0"),
        (["--batch-size", "7"], "fit.batch_size 100 -> 7"),
        (["--objective", "stl"], "fit.objective 'auto' -> 'stl'"),
        (["--seed", "3"], "fit.seed 0 -> 3"),
        (["--warmup", "2"], "fit.warmup None -> 2.0"),
        (["--dataset", "mnist5k"], "data.dataset 'digits' -> 'mnist5k'"),
        (["--binarize", "static"], "data.binarization 'dynamic' -> 'static'"),
    ],
)
def test_resume_with_a_changed_setting_is_refused_naming_it(a_run, capsys, flags, named):
    out, argv = a_run
    before = _hashes(out)
    code = main([*argv, "--eval-samples", "5", "--no-progress", "--out", str(out), "--resume"])
    assert code == 0  # the same settings resume (and, all epochs done, just evaluate)
    after_ok = _hashes(out)
    capsys.readouterr()
    assert main([*argv, *flags, "--no-progress", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1, err
    assert _hashes(out) == after_ok, "a refused resume changed the run folder"
    assert {k for k in before if before[k] != after_ok[k]} <= {"metrics.json", "samples.png"}


@pytest.mark.parametrize(
    "flags, says",
    [
        ([], "holds a run already"),
        (["--lr", "-1"], "lr must be >= 0"),
        (["--z-dim", "0"], "--z-dim must be at least 1"),
        (["--hidden", "0"], "--hidden widths must be at least 1"),
        (["--batch-size", "0"], "batch_size must be a whole number >= 1"),
        (["--epochs", "0"], "epochs must be a whole number >= 1"),
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--device", "gpu"], "is not a torch device"),
        (["--model", "no_such_file.py:make"], "no such model file"),
    ],
)
def test_a_refused_command_leaves_the_run_folder_byte_for_byte(a_run, capsys, flags, says):
    out, argv = a_run
    before = _hashes(out)
    assert main([*argv, *flags, "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert _hashes(out) == before
    assert not (out / ".lock").exists()


@pytest.mark.parametrize(
    "argv, says",
    [
        (["sample", "{out}", "--n", "0"], "must be at least 1"),
        (["evaluate", "{out}", "--num-samples", "-3"], "must be at least 1"),
        (["evaluate", "{out}", "--dataset", "mnist5k", "--limit", "5"], "784 features"),
        (["train", "--out", "{out}/config.json"], "is a file, not a folder"),
    ],
)
def test_bad_input_elsewhere_is_one_line(a_run, capsys, argv, says):
    out, _ = a_run
    before = _hashes(out)
    argv = [a.replace("{out}", str(out)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's refusals
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert _hashes(out) == before


def test_divergence_is_one_line_keeps_the_checkpoint_or_skips(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--preset", "small", "--epochs", "3"]
    argv += ["--eval-samples", "5", "--no-progress", "--lr", "1e6"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "the run diverged at epoch" in err and "--skip-nonfinite" in err, err
    assert len(err.strip().splitlines()) == 1, err
    code = main([*argv, "--skip-nonfinite", "1000", "--out", str(tmp_path / "b")])
    assert code in (0, 1), "skipping keeps the run going; it may still fail at evaluation"


def test_sigterm_inside_fit_finishes_the_step_and_saves(tmp_path):
    from ppl_vae import build_vae, fit
    from ppl_vae.data.datasets import load_dataset
    from ppl_vae.training.signals import Terminated

    data = load_dataset("digits")
    steps = []

    def term_at_step_3(epoch, step, loss):
        steps.append(step)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Terminated):
        fit(
            build_vae(64, z_dim=2, hidden=(8,)),
            data,
            epochs=2,
            out=tmp_path,
            callback=term_at_step_3,
            progress=False,
        )
    assert steps == [0, 1, 2, 3], "the step that got the signal finished, no more"
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["train"]["step_in_epoch"] == 4
    assert not (tmp_path / ".lock").exists()
