"""The named steps of fit, each alone: the stopping rule, taking the run folder, the resume
check, the metrics log, one guarded step, the rule that skips Pyro's checks, the epoch record."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch

from ppl_vae.training.batching import TensorFeed
from ppl_vae.training.checkpoint import CheckpointError, RunLock, save_checkpoint, write_json
from ppl_vae.training.config import FitConfig
from ppl_vae.training.engines import NonFiniteLoss
from ppl_vae.training.epoch import checks_skippable, guarded_step
from ppl_vae.training.folder import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    RUN_FORMAT,
    read_checkpoint,
    take_folder,
    write_metrics,
)
from ppl_vae.training.state import TrainState
from ppl_vae.training.validation import count_epoch, epoch_record, patience_spent, report_line


def _end_epochs(losses: list[float], warmup: int, patience: int) -> list[tuple[int, bool]]:
    """(bad epochs, stop) after each epoch with these losses, as fit counts them."""
    state, seen = TrainState(), []
    for loss in losses:
        state.next_epoch()
        count_epoch(state, loss, warmup)
        seen.append((state.bad_epochs, patience_spent(state, patience)))
    return seen


def test_patience_counts_only_epochs_after_the_warm_up():
    # epochs 1-3 warm the KL up: their rising losses are not held against the run
    seen = _end_epochs([5.0, 6.0, 7.0, 8.0, 9.0], warmup=3, patience=2)
    assert seen == [(0, False), (0, False), (0, False), (1, False), (2, True)], seen


def test_a_new_best_resets_the_count_and_is_reported():
    state = TrainState(epoch=4, best_val_loss=3.0, bad_epochs=2)
    assert count_epoch(state, 2.5, warmup=0), "a lower loss is a new best"
    assert (state.best_val_loss, state.bad_epochs) == (2.5, 0)
    assert not count_epoch(state, 2.5, warmup=0), "an equal loss is no improvement"
    assert state.bad_epochs == 1
    assert not patience_spent(state, None), "without patience the run never stops early"


def test_a_folder_with_a_run_is_refused_naming_both_flags(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"a run")
    lock = RunLock(tmp_path)
    with pytest.raises(CheckpointError, match="a run already") as e:
        take_folder(tmp_path, lock, resume=False, overwrite=False)
    lock.release()
    for flag in ("--resume", "--overwrite"):
        assert flag in str(e.value), f"the refusal does not name {flag}: {e.value}"
    assert (tmp_path / CHECKPOINT).read_bytes() == b"a run", "a refused folder was touched"


def test_taking_a_folder_drops_temporary_files_and_overwrite_clears_the_run(tmp_path):
    for name in (CHECKPOINT, METRICS, CONFIG, "samples.png", "mine.txt"):
        (tmp_path / name).write_text("old")
    (tmp_path / f".{CHECKPOINT}.abc.tmp").write_text("half a write")
    lock = RunLock(tmp_path)
    try:
        assert take_folder(tmp_path, lock, resume=True, overwrite=False), "resume keeps the run"
        assert not list(tmp_path.glob(".*.tmp")), "a killed write's temporary file was kept"
        assert (tmp_path / CHECKPOINT).exists()
    finally:
        lock.release()
    lock = RunLock(tmp_path)
    try:
        assert not take_folder(tmp_path, lock, resume=False, overwrite=True)
    finally:
        lock.release()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["mine.txt"], f"overwrite must remove the run's files, only those: {left}"


def _run_info(config: FitConfig) -> dict:
    return {"format": RUN_FORMAT, "program": {"name": "p"}, "data": None, "fit": asdict(config)}


def test_the_resume_check_names_a_changed_setting_and_lets_resumable_ones_change(tmp_path):
    old = FitConfig(batch_size=50, epochs=2)
    write_json(tmp_path / CONFIG, _run_info(old))
    save_checkpoint({"config": asdict(old), "train": {}}, tmp_path / CHECKPOINT)
    resumed = FitConfig(batch_size=50, epochs=9)  # epochs may change
    saved = read_checkpoint(tmp_path, _run_info(resumed), resumed, processes=1)
    assert saved["config"]["epochs"] == 2
    changed = FitConfig(batch_size=100, epochs=9)
    with pytest.raises(CheckpointError, match="another run") as e:
        read_checkpoint(tmp_path, _run_info(changed), changed, processes=1)
    assert "fit.batch_size 50 -> 100" in str(e.value), str(e.value)
    assert "epochs" not in str(e.value).split("Resume with")[0], "a resumable setting named"


def test_the_resume_check_wants_as_many_processes(tmp_path):
    config = FitConfig()
    write_json(tmp_path / CONFIG, _run_info(config))
    save_checkpoint({"config": asdict(config), "train": {}, "processes": 2}, tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match="over 2 processes and this one has 1"):
        read_checkpoint(tmp_path, _run_info(config), config, processes=1)


def test_metrics_are_the_history_one_line_per_epoch(tmp_path):
    history = [{"epoch": 1, "train_loss": 3.5}, {"epoch": 2, "train_loss": 2.25, "val_loss": 2.5}]
    write_metrics(tmp_path, history)
    write_metrics(tmp_path, history[:1])  # rewritten whole: a shorter history, fewer lines
    lines = (tmp_path / METRICS).read_text().splitlines()
    assert [json.loads(x) for x in lines] == history[:1], lines


class _Failing:
    """An engine whose every step fails as ``error`` says."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def step(self, batch: tuple) -> float:
        raise self.error


def test_a_non_finite_step_is_skipped_as_often_as_allowed_then_stops_the_run():
    state = TrainState(epoch=1, step_in_epoch=7)
    engine = _Failing(NonFiniteLoss(math.nan))
    assert guarded_step(engine, (), state, skip_nonfinite=1) is None
    assert state.skipped == 1
    with pytest.raises(FloatingPointError, match="epoch 2, step 7: the loss became nan") as e:
        guarded_step(engine, (), state, skip_nonfinite=1)
    assert "--skip-nonfinite" in str(e.value)


def test_a_step_error_other_than_a_support_is_not_skipped():
    state = TrainState()
    with pytest.raises(ValueError, match="training failed at epoch 1, step 0: shapes differ"):
        guarded_step(_Failing(ValueError("shapes differ")), (), state, skip_nonfinite=5)
    assert state.skipped == 0


def test_pyros_checks_are_skipped_only_after_a_clean_first_epoch_over_rows():
    feed = TensorFeed((torch.zeros(4, 2),), batch_size=2)
    assert not checks_skippable(TrainState(epoch=0), feed), "the first epoch checks every row"
    assert checks_skippable(TrainState(epoch=1), feed)
    assert not checks_skippable(TrainState(epoch=1, skipped=1), feed), "after a skipped step"


def test_the_epoch_record_and_its_report_line():
    state = TrainState(epoch=2, loss_sum=9.0, loss_count=3)
    record = epoch_record(state, (2.5, -2.0, 0.5), seconds=1.34, lr=0.01)
    assert list(record) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_reconstruction",
        "val_kl",
        "seconds",
        "lr",
    ], "metrics.jsonl keeps its key order"
    assert (record["epoch"], record["train_loss"], record["val_kl"]) == (3, 3.0, 0.5)
    line = report_line(record, epochs=10)
    assert line == "epoch 3/10  train 3.00  val 2.50 nats  (1.3 s)", line
    no_val = epoch_record(TrainState(), None, seconds=0.0)
    assert list(no_val) == ["epoch", "train_loss", "seconds"], "no steps: a loss of 0"
