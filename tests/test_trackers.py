"""TensorBoard, MLflow and CSV trackers: what they wrote, read back with their own readers."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from ppl_vae import fit
from ppl_vae.cli import main
from ppl_vae.models.build import build_vae
from ppl_vae.training.trackers import CSVTracker, MLflowTracker, TensorBoardTracker

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def _tensorboard(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _mlflow(folder):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(folder / "mlruns").resolve().as_uri())
    run = client.get_run((folder / "mlflow_run_id").read_text().strip())

    def history(key):
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]

    return run, history


def _steps_csv(folder):
    with (folder / "steps.csv").open(newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


@pytest.fixture(autouse=True)
def _file_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_train_logs_settings_steps_epochs_and_final_to_all_three(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--epochs", "2", "--eval-samples", "30"]
    argv += ["--no-progress", "--out", str(out), "--logger", "tensorboard,mlflow,csv"]
    assert main(argv) == 0, capsys.readouterr().err
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((out / "metrics.json").read_text())["test"]
    steps = 2 * 15  # 1437 training digits in batches of 100

    scalars = _tensorboard(out)
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, steps + 1))
    assert [v for _, v in scalars["val/loss"]] == pytest.approx([h["val_loss"] for h in history])
    assert [v for _, v in scalars["val/kl"]] == pytest.approx([h["val_kl"] for h in history])
    assert scalars["test/log_likelihood"][0][1] == pytest.approx(final["log_likelihood"])

    run, mlflow_history = _mlflow(out)
    assert run.data.params["fit.lr"] == "0.001" and run.data.params["run.dataset"] == "digits"
    assert len(mlflow_history("train_loss")) == steps
    assert mlflow_history("epoch_val_loss")[-1][1] == pytest.approx(history[-1]["val_loss"])
    assert mlflow_history("test_log_likelihood")[0][1] == pytest.approx(final["log_likelihood"])
    assert mlflow_history("test_share_pareto_k_above_0.7")[0][1] == pytest.approx(
        final["share_pareto_k_above_0.7"]
    )

    # the three agree with each other on every step's loss
    rows = _steps_csv(out)
    assert rows == [(s, pytest.approx(v)) for s, v in scalars["train/loss"]]
    assert sorted(mlflow_history("train_loss")) == [(s, pytest.approx(v)) for s, v in rows]
    with (out / "final.csv").open(newline="") as f:
        logged = {r["measure"]: float(r["value"]) for r in csv.DictReader(f)}
    assert logged["nll"] == pytest.approx(final["nll"])


class Crash(RuntimeError):
    pass


def test_a_run_that_crashed_and_resumed_logs_every_step_once(tmp_path):
    x = torch.rand(120, 16).bernoulli()
    folder = tmp_path / "run"

    def crash(epoch, step, loss):
        if (epoch, step) == (1, 4):
            raise Crash  # not Ctrl-C: no checkpoint here, the last is at the end of epoch 1

    def trackers():
        return [TensorBoardTracker(), MLflowTracker(), CSVTracker()]

    settings = {"epochs": 3, "batch_size": 20, "progress": False}
    torch.manual_seed(0)
    first = trackers()
    with pytest.raises(Crash):
        fit(build_vae(16, hidden=(8,), z_dim=2), x, x[:20], out=folder, trackers=first,
            callback=crash, **settings)  # fmt: skip
    for t in first:
        t.close()
    torch.manual_seed(0)
    second = trackers()
    result = fit(build_vae(16, hidden=(8,), z_dim=2), x, x[:20], out=folder, resume=True,
                 trackers=second, **settings)  # fmt: skip
    for t in second:
        t.close()
    everyone = list(range(1, result.steps + 1))
    assert result.steps == 3 * 6
    assert [s for s, _ in _tensorboard(folder)["train/loss"]] == everyone
    assert [s for s, _ in _steps_csv(folder)] == everyone
    _, history = _mlflow(folder)
    assert sorted(s for s, _ in history("train_loss")) == everyone
    assert [s for s, _ in history("epoch_val_loss")] == [6, 12, 18]


def test_an_unknown_or_missing_logger_is_one_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--out", str(out), "--logger", "wandb"]) == 2
    assert "--logger 'wandb': choose from tensorboard, mlflow, csv" in capsys.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    assert main(["train", "--dataset", "digits", "--out", str(out), "--logger", "mlflow"]) == 2
    err = capsys.readouterr().err
    assert "needs the mlflow package: pip install 'ppl_vae[mlflow]'" in err
    assert not out.exists() or not any(out.iterdir()), "a refused run wrote files"
    assert os.environ.get("MLFLOW_TRACKING_URI") is None
