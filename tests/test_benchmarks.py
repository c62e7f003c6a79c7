"""benchmarks/mnist.py on a tiny budget, so that the script that makes the MNIST table cannot
rot: rows train, evaluate, resume to a larger budget and are read back instead of redone."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mnist.py"


def _exec(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load():
    return _exec(SCRIPT, "bench_mnist")


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


def _long_run(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return _exec(SCRIPT.parent / "long_run.py", "bench_long")


@pytest.fixture(scope="module")
def long_run_module():
    """benchmarks/long_run.py, for tests that cannot take the function-scoped monkeypatch."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        yield _exec(SCRIPT.parent / "long_run.py", "bench_long")
    finally:
        sys.path.remove(str(SCRIPT.parent))


@settings(max_examples=500, deadline=None)
@given(
    held=st.integers(0, 500),
    ahead=st.integers(1, 500),
    left=st.floats(0, 1e5),
    epoch_s=st.floats(0.01, 100),
    curve_s=st.floats(0, 1000),
    final_s=st.floats(0, 5000),
)
@example(  # evaluations that fill the budget but for a subnormal: 1.0 + 5e-39 == 1.0
    held=0, ahead=1, left=1.0, epoch_s=1.0, curve_s=1.0, final_s=5.431174204680678e-39
)
def test_long_run_budget_trains_what_fits_and_keeps_the_evaluations(
    long_run_module, held, ahead, left, epoch_s, curve_s, final_s
) -> None:
    milestone = held + ahead
    target = long_run_module.budget_target(held, milestone, left, epoch_s, (curve_s, final_s))
    evaluations = curve_s + final_s
    if target is None:  # not even the two evaluations fit
        assert evaluations > left
        return
    assert held <= target <= milestone
    # to float rounding (a budget is not kept to the nanosecond)
    assert (target - held) * epoch_s + evaluations <= left * (1 + 1e-9) + 1e-12
    if target < milestone:  # one epoch more would not have fit
        assert (target + 1 - held) * epoch_s + evaluations > left * (1 - 1e-9)


@pytest.mark.slow
def test_long_run_stages_a_row_and_reads_its_curve_back(tmp_path, capsys, monkeypatch) -> None:
    long_run = _long_run(monkeypatch)
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


@pytest.mark.slow
def test_long_run_stops_within_its_hours_with_a_final_evaluation(
    tmp_path, capsys, monkeypatch
) -> None:
    long_run = _long_run(monkeypatch)
    monkeypatch.setattr(long_run, "clock", lambda: 0.0)  # time stands still: exact budgets
    out = tmp_path / "long"
    argv = ["--row", "seed", "--dataset", "mnist5k", "--curve-samples", "8"]
    argv += ["--curve-points", "12", "--samples", "10", "--test-limit", "12", "--out", str(out)]
    folder = out / "seed"
    # a fresh folder: one epoch alone first, to time an epoch, then the rest of the milestone
    curve = long_run.run([*argv, "--milestones", "2", "--hours", "1"])
    assert sorted(curve) == ["2"] and "final" in curve["2"]
    args = long_run.parse([*argv, "--milestones", "2", "7"])
    epoch_s, costs = long_run.epoch_seconds(folder), long_run.eval_costs(args, curve)
    assert epoch_s > 0 and costs[0] > 0 and costs[1] > costs[0]  # K 10 against 8, same points
    hours = (sum(costs) + 2.5 * epoch_s) / 3600  # room for two epochs and both evaluations
    curve = long_run.run([*argv, "--milestones", "2", "7", "--hours", str(hours)])
    assert sorted(curve, key=int) == ["2", "4"] and "final" in curve["4"]
    assert "Milestones left: 7" in capsys.readouterr().out
    curve = long_run.run([*argv, "--milestones", "2", "7", "9", "--hours", "1e-9"])
    assert sorted(curve, key=int) == ["2", "4"]  # not even the evaluations fit: nothing done
    assert "stopped at epoch 4" in capsys.readouterr().out
    curve = long_run.run([*argv, "--milestones", "2", "7"])  # the same command continues
    assert sorted(curve, key=int) == ["2", "4", "7"] and "final" in curve["7"]
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 8)), lines
    capsys.readouterr()


CONV_SMOKE = ["--dataset", "mnist5k", "--epochs", "1", "--samples", "8", "--test-limit", "12"]
CONV_SMOKE += ["--pythae-samples", "8", "--pythae-test-limit", "12", "--pythae-train-limit", "100"]
CONV_SMOKE += ["--speed-rows", "200", "--repeats", "1", "--no-compile", "--threads", "1"]
CONV_SMOKE += ["--colour-images", "90", "--colour-epochs", "1"]


def test_conv_benchmark_runs_every_part_in_its_smallest_mode(tmp_path, capsys, monkeypatch):
    """benchmarks/conv.py end to end on a tiny budget: every table has every row, with finite
    numbers, and the JSON holds them."""
    import functools
    import importlib.util as util
    import math

    from ppl_vae.data import datasets

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    # the embedded digits are parsed from CSV, 5 s a load, and each row's train and evaluate
    # load them again: parse them once
    monkeypatch.setattr(datasets, "_load_mnist5k", functools.lru_cache(datasets._load_mnist5k))
    conv = _exec(SCRIPT.parent / "conv.py", "bench_conv")
    results = conv.run([*CONV_SMOKE, "--out", str(tmp_path / "conv")])
    text = capsys.readouterr().out
    assert "nan" not in text.lower() and "inf" not in text.lower(), text
    assert list(results["mnist"]) == ["mlp", "conv"], results["mnist"]
    for row in ("mlp", "conv"):
        r = results["mnist"][row]
        assert f"| {row} |" in text, text
        assert r["log_likelihood"] < 0 and r["elbo"] < 0 and r["parameters"] > 0, r
        assert math.isfinite(r["stderr_points"]) and r["seconds_per_epoch"] > 0, r
    assert results["mnist"]["conv"]["parameters"] != results["mnist"]["mlp"]["parameters"]
    if util.find_spec("pythae") is None:
        assert "skipped" in results["pythae"], results["pythae"]
    else:
        pythae = results["pythae"]["rows"]
        assert set(pythae) == {"conv", "pythae-conv"}, pythae
        assert "| pythae-conv |" in text, text
        assert all(r["num_points"] == 12 and r["num_samples"] == 8 for r in pythae.values())
        assert all(r["log_likelihood"] < 0 and r["seconds_per_epoch"] > 0 for r in pythae.values())
        differences = results["pythae"]["differences"]
        assert set(differences) == {"conv"}, differences
        assert all(math.isfinite(d["mean"]) for d in differences.values()), differences
    speed = results["speed"]["rows"]
    assert len(speed) == 4 and all(r["ms_per_step"] > 0 for r in speed.values()), speed
    colour = results["colour"]["rows"]
    assert list(colour) == ["shapes:conv", "shapes:mlp"], colour
    for name, r in colour.items():
        assert f"| {name} |" in text and r["image_shape"] == [3, 16, 16], r
        assert r["log_likelihood"] < 0 and 0 < r["bits_per_dim"] < 16, r
    saved = json.loads((tmp_path / "conv" / "conv.json").read_text())
    assert set(saved) >= {"machine", "mnist", "pythae", "speed", "colour", "tables"}, saved


def test_long_run_stops_a_row_by_validation_and_says_so_afterwards(
    tmp_path, capsys, monkeypatch
) -> None:
    """--patience reaches ppl-vae train; a stage that fit's patience ended early becomes the
    final milestone (curve and final evaluation at the epoch reached), curve.json says where
    and why, and the same command afterwards trains nothing. ppl-vae is faked: the control
    flow is what is tested here (fit's patience has its own tests)."""
    long_run = _long_run(monkeypatch)
    out = tmp_path / "long"
    folder = out / "seed"
    calls = []
    val_losses = [100.0, 90.0, 85.0, 86.0, 87.0]  # best at epoch 3, then two worse: patience 2

    def train_row(name, args):
        calls.append(("train", args.epochs, args.patience))
        folder.mkdir(parents=True, exist_ok=True)
        epochs = min(args.epochs, len(val_losses))
        records = [{"epoch": e + 1, "val_loss": v, "seconds": 1.0} for e, v in
                   enumerate(val_losses[:epochs])]  # fmt: skip
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        metrics = {"epochs": epochs}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    def evaluate_row(name, args):
        calls.append(("evaluate", args.samples))
        return {"log_likelihood": -90.0 - args.samples / 1000, "stderr": 0.1,
                "stderr_points": 0.2, "elbo": -95.0, "share_pareto_k_above_0.7": 0.5}  # fmt: skip

    monkeypatch.setattr(long_run.mnist, "train_row", train_row)
    monkeypatch.setattr(long_run.mnist, "evaluate_row", evaluate_row)
    argv = ["--row", "seed", "--dataset", "mnist5k", "--curve-samples", "8", "--samples", "50"]
    argv += ["--out", str(out), "--patience", "2", "--milestones", "2", "30", "100"]
    curve = long_run.run(argv)
    assert sorted(curve, key=int) == ["2", "5"], curve
    assert curve["5"]["final"]["log_likelihood"] == -90.05, "the final evaluation, K = 50"
    assert curve["5"]["stopped_by_validation"] == {
        "best_epoch": 3, "best_val_loss": 85.0, "patience": 2
    }  # fmt: skip
    assert ("train", 30, 2) in calls, "--patience reaches the training"
    printed = capsys.readouterr().out
    assert "stopped by validation at epoch 5" in printed and "after epoch 3" in printed
    calls.clear()
    assert long_run.run(argv) == curve
    assert not [c for c in calls if c[0] == "train"], "a stopped row trains no more"
    assert "nothing left to train" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        long_run.parse(["--row", "seed", "--patience", "5", "--val-size", "0"])


@pytest.mark.slow
def test_peer_budget_stops_both_sides_by_the_clock_and_pairs_them(tmp_path, capsys):
    """benchmarks/peer_budget.py with the hand-written peer (no pythae needed): each side is
    stopped by the clock, not by an epoch count, both are scored on the same points, and a
    second call reads the trained sides back instead of training again."""
    bench = _exec(SCRIPT.parent / "peer_budget.py", "bench_peer_budget")
    argv = ["--dataset", "mnist5k", "--seconds", "8", "--samples", "5", "--test-limit", "20"]
    argv += ["--ours", "seed-stl-warmup", "--peer", "plain-vae", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "| seed-stl-warmup |" in text and "| plain-vae |" in text, text
    assert "plain-vae - seed-stl-warmup NLL, paired:" in text, text
    for side in ("seed-stl-warmup", "plain-vae"):
        metrics = json.loads((tmp_path / side / "metrics.json").read_text())
        assert metrics["seconds_budget"] == 8.0 and metrics["threads"] >= 1
        assert 8.0 <= metrics["train_seconds"] < 90, metrics  # stopped by the clock
        assert metrics["trained_epochs"] < bench.UNTIL_STOPPED, metrics  # whole epochs
    assert (tmp_path / "seed-stl-warmup" / "checkpoint.pt").is_file()  # saved at the stop
    assert json.loads((tmp_path / "plain-vae" / "metrics.json").read_text())["trained_epochs"] >= 1
    first = (tmp_path / "table.md").read_text()
    assert bench.main(argv) == 0  # read back: the same trained sides, the same table
    assert (tmp_path / "table.md").read_text() == first
