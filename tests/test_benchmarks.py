"""benchmarks/mnist.py on a tiny budget, so that the script that makes the MNIST table cannot
rot: rows train, evaluate, resume to a larger budget and are read back instead of redone."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mnist.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_mnist", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_mnist_table_trains_evaluates_and_resumes(tmp_path, capsys) -> None:
    bench = _load()
    out = tmp_path / "rows"
    argv = ["--dataset", "mnist5k", "--samples", "8", "--test-limit", "12", "--out", str(out)]
    argv += ["--rows", "seed", "two-layer"]
    text = bench.run([*argv, "--epochs", "1"])
    for row in ("seed", "two-layer"):
        assert f"| {row} |" in text, text
        ev = json.loads((out / row / "eval-K8-n12.json").read_text())
        assert ev["num_points"] == 12 and ev["trained_epochs"] == 1 and ev["log_likelihood"] < 0
    first = (out / "seed" / "eval-K8-n12.json").read_text()
    bench.run([*argv, "--epochs", "1"])  # nothing left to do: read back, not redone
    assert (out / "seed" / "eval-K8-n12.json").read_text() == first
    bench.run([*argv, "--epochs", "2"])  # a larger budget resumes the checkpoint
    lines = (out / "seed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2], lines
    assert json.loads((out / "seed" / "eval-K8-n12.json").read_text())["trained_epochs"] == 2
    capsys.readouterr()


@pytest.mark.slow
def test_long_run_stages_a_row_and_reads_its_curve_back(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_long", SCRIPT.parent / "long_run.py")
    long_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(long_run)
    out = tmp_path / "long"
    argv = ["--row", "seed", "--dataset", "mnist5k", "--curve-samples", "8"]
    argv += ["--curve-points", "12", "--samples", "10", "--test-limit", "12", "--out", str(out)]
    curve = long_run.run([*argv, "--milestones", "1", "2"])
    assert sorted(curve, key=int) == ["1", "2"] and "final" in curve["2"]
    assert curve["2"]["curve"]["log_likelihood"] < 0
    assert (out / "seed" / "learning-curve.png").stat().st_size > 0
    lines = (out / "seed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2], lines  # one run, staged
    saved = (out / "seed" / "curve.json").read_text()
    long_run.run([*argv, "--milestones", "1", "2"])  # finished milestones are read back
    assert (out / "seed" / "curve.json").read_text() == saved
    capsys.readouterr()
