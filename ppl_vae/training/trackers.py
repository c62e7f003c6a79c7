"""Experiment trackers beside ``metrics.jsonl``: TensorBoard (``torch.utils.tensorboard``),
MLflow (a local file store in the run folder, or ``MLFLOW_TRACKING_URI``) and CSV files.

``metrics.jsonl`` stays the source of truth; a tracker gets a copy of the same numbers: the
run's settings, the loss of every step, the validation loss and the bound's two terms of
every epoch, and the final log p(x) with its diagnostics. Steps are counted over the whole run
(``global_step``), so a resumed run continues its curves. What a tracker writes between two
checkpoints is held back until the later one (:meth:`Tracker.commit`) where the tracker can
hold it (MLflow, CSV), and purged on resume where it cannot (TensorBoard's ``purge_step``):
a run stopped and resumed logs each step once.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["TRACKERS", "CSVTracker", "MLflowTracker", "TensorBoardTracker", "Tracker", "make"]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"fit": {"lr": 0.001}}`` as ``{"fit.lr": 0.001}``."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    """The entries of ``d`` that are numbers (not flags), as floats."""
    return {k: float(v) for k, v in d.items() if type(v) in (int, float)}


class Tracker:
    """What :func:`ppl_vae.fit` and ``ppl-vae train`` tell a tracker, in this order:
    ``start`` once, then ``log_step`` / ``log_epoch`` with a ``commit`` after each checkpoint,
    ``log_final`` after the evaluation, ``close``."""

    name = "tracker"

    def start(self, folder: Path, settings: dict[str, Any], step: int) -> None:
        """Open in the run ``folder``; ``step`` is the number of steps the run has taken (0,
        or those a resumed run's checkpoint holds); steps are counted from 1."""

    def log_step(self, step: int, loss: float) -> None:
        """The training loss (nats per data point) of global step ``step``."""

    def log_epoch(self, step: int, record: dict[str, float]) -> None:
        """One epoch's record (``metrics.jsonl``'s line) at the global step it ended on."""

    def commit(self) -> None:
        """A checkpoint was written: what was logged so far is part of the run for good."""

    def log_final(self, step: int, metrics: dict[str, Any]) -> None:
        """The evaluation: log p(x), its standard error, the ELBO, the diagnostics."""

    def close(self) -> None:
        """Release the files; what no checkpoint committed is dropped where it can be (the
        resumed run logs it again)."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class CSVTracker(Tracker):
    """``steps.csv`` (step, loss), ``epochs.csv`` (one row per epoch) and ``final.csv``
    (measure, value) in the run folder."""

    name = "csv"

    def start(self, folder: Path, settings: dict[str, Any], step: int) -> None:
        self.folder = folder
        self.steps_path = folder / "steps.csv"
        self.held: list[tuple[int, float]] = []
        kept = []
        if step and self.steps_path.is_file():  # rows past the checkpoint will come again
            with self.steps_path.open(newline="") as f:
                kept = [row for row in csv.reader(f)][1:]
            kept = [row for row in kept if int(row[0]) <= step]
        with self.steps_path.open("w", newline="") as f:
            csv.writer(f).writerows([("step", "loss"), *kept])
        self.epochs: list[dict[str, float]] = []
        if step and (folder / "epochs.csv").is_file():
            with (folder / "epochs.csv").open(newline="") as f:
                self.epochs = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")

    def log_step(self, step: int, loss: float) -> None:
        self.held.append((step, loss))

    def log_epoch(self, step: int, record: dict[str, float]) -> None:
        self.epochs.append({"step": step, **record})

    def commit(self) -> None:
        with self.steps_path.open("a", newline="") as f:
            csv.writer(f).writerows(self.held)
        self.held = []
        if self.epochs:
            keys = list(dict.fromkeys(k for r in self.epochs for k in r))
            with (self.folder / "epochs.csv").open("w", newline="") as f:
                writer = csv.DictWriter(f, keys)
                writer.writeheader()
                writer.writerows(self.epochs)

    def log_final(self, step: int, metrics: dict[str, Any]) -> None:
        with (self.folder / "final.csv").open("w", newline="") as f:
            csv.writer(f).writerows([("measure", "value"), *_numbers(metrics).items()])


class TensorBoardTracker(Tracker):
    """Event files in ``RUN/tensorboard`` (``tensorboard --logdir RUN``): ``train/loss`` per
    step; ``val/loss``, ``val/reconstruction``, ``val/kl`` and ``train/epoch_loss`` per epoch;
    ``test/...`` at the end; the settings as text."""

    name = "tensorboard"

    def start(self, folder: Path, settings: dict[str, Any], step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events past the checkpoint, written by the run that stopped after it,
        # are dropped, so each step is logged once
        self.writer = SummaryWriter(
            str(folder / "tensorboard"), purge_step=step + 1 if step else None
        )
        text = "\n".join(f"    {k}: {v}" for k, v in _flat(settings).items())
        self.writer.add_text("settings", text, step)

    def log_step(self, step: int, loss: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)

    def log_epoch(self, step: int, record: dict[str, float]) -> None:
        names = {"train_loss": "train/epoch_loss", "val_loss": "val/loss"}
        names |= {"val_reconstruction": "val/reconstruction", "val_kl": "val/kl"}
        for key, tag in names.items():
            if key in record:
                self.writer.add_scalar(tag, record[key], step)

    def commit(self) -> None:
        self.writer.flush()

    def log_final(self, step: int, metrics: dict[str, Any]) -> None:
        for key, value in _numbers(metrics).items():
            self.writer.add_scalar(f"test/{key}", value, step)

    def close(self) -> None:
        if hasattr(self, "writer"):
            self.writer.close()


class MLflowTracker(Tracker):
    """An MLflow run, in ``MLFLOW_TRACKING_URI`` when set and otherwise in a file store in
    ``RUN/mlruns`` (``mlflow ui --backend-store-uri RUN/mlruns``), experiment ``ppl_vae``;
    a resumed run continues the same MLflow run (its id is kept in ``RUN/mlflow_run_id``).
    Settings are params; ``train_loss`` per step, the epoch records and ``test_*`` metrics."""

    name = "mlflow"

    def start(self, folder: Path, settings: dict[str, Any], step: int) -> None:
        import logging

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:
            # the file store is what works with no server and no database; MLflow 3 asks
            # for this switch to use it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (folder / "mlruns").resolve().as_uri()
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.uri, self.held = uri, []
        id_file = folder / "mlflow_run_id"
        if step and id_file.is_file():
            self.run_id = id_file.read_text().strip()
            return
        experiment = self.client.get_experiment_by_name("ppl_vae")
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment("ppl_vae")
        )
        run = self.client.create_run(experiment_id, run_name=folder.name)
        self.run_id = run.info.run_id
        id_file.write_text(self.run_id + "\n")
        from mlflow.entities import Param

        params = [Param(k, str(v)[:500]) for k, v in _flat(settings).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _metric(self, key: str, value: float, step: int) -> Any:
        import time

        from mlflow.entities import Metric

        return Metric(key, float(value), int(time.time() * 1000), step)

    def log_step(self, step: int, loss: float) -> None:
        self.held.append(self._metric("train_loss", loss, step))

    def log_epoch(self, step: int, record: dict[str, float]) -> None:
        for key, value in _numbers(record).items():
            if key != "epoch":
                self.held.append(self._metric(f"epoch_{key}", value, step))

    def commit(self) -> None:
        for i in range(0, len(self.held), 1000):
            self.client.log_batch(self.run_id, metrics=self.held[i : i + 1000])
        self.held = []

    def log_final(self, step: int, metrics: dict[str, Any]) -> None:
        self.held += [self._metric(f"test_{k}", v, step) for k, v in _numbers(metrics).items()]
        self.commit()

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.set_terminated(self.run_id)


TRACKERS: dict[str, type[Tracker]] = {
    t.name: t for t in (TensorBoardTracker, MLflowTracker, CSVTracker)
}


_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def make(names: str | None) -> list[Tracker]:
    """Trackers from ``--logger`` text (``tensorboard,mlflow,csv``), or a ``ValueError`` that
    names an unknown one or the package one needs."""
    if not names:
        return []
    import importlib.util

    out = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in TRACKERS:
            raise ValueError(f"--logger {name!r}: choose from {', '.join(TRACKERS)}")
        package = _PACKAGES.get(name)
        if package is not None and importlib.util.find_spec(package) is None:
            raise ValueError(
                f"--logger {name} needs the {package} package: pip install 'ppl_vae[{name}]'"
            )
        out.append(TRACKERS[name]())
    return out
