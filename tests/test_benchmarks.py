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
