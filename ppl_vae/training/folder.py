"""The files of a run folder: taking the folder, telling a resumed run from another, the log."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ppl_vae.training.checkpoint import (
    CheckpointError,
    RunLock,
    load_checkpoint,
    read_json,
    write_text,
)
from ppl_vae.training.config import RESUMABLE, FitConfig

__all__ = ["read_checkpoint", "take_folder", "write_metrics"]


CHECKPOINT = "checkpoint.pt"


METRICS = "metrics.jsonl"


CONFIG = "config.json"


RUN_FORMAT = "ppl_vae-run-2"


#: Files of a run folder that a new run replaces (with ``overwrite``).
RUN_FILES = (
    CHECKPOINT,
    CONFIG,
    METRICS,
    "metrics.json",
    "samples.png",
    "reconstructions.png",
    "curves.png",
)


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """What differs between two run descriptions, as ``key: old -> new`` (resumable settings
    left out)."""
    out = []
    for key in sorted(set(old) | set(new)):
        # "run" holds the CLI's flags, which the program, data and fit sections describe
        if key in ("format", "run") or (prefix == "fit." and key in RESUMABLE):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, list) and isinstance(b, tuple) and a == list(b)):
            out.append(f"{prefix}{key} {a!r} -> {b!r}")
    return out


def take_folder(out: Path, lock: RunLock, resume: bool, overwrite: bool) -> bool:
    """Make ``out`` and lock it, drop the temporary files of a write killed halfway, and
    either keep its run (``resume``), clear it (``overwrite``, or no run there) or refuse a
    folder that holds a run. True when there is a checkpoint to resume from."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder; give --out a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except PermissionError as e:
        raise ValueError(f"cannot write to {out}: {e.strerror}; pick another --out") from e
    for name in RUN_FILES:
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    path = out / CHECKPOINT
    if resume and path.exists():
        return True
    if path.exists() and not overwrite:
        raise CheckpointError(
            f"{out} holds a run already ({CHECKPOINT}); pass resume=True (--resume) to "
            "continue it, overwrite=True (--overwrite) to replace it, or another folder"
        )
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    return False


def read_checkpoint(
    out: Path,
    run_info: dict[str, Any],
    config: FitConfig,
    processes: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The checkpoint in ``out``, after checking that it holds the run ``run_info`` describes
    (each difference named), trained at this ``config.lr`` if a schedule sets the rate, over
    as many ``processes``."""
    path = out / CHECKPOINT
    saved = load_checkpoint(path, map_location=device)
    if "train" not in saved:
        raise CheckpointError(f"{path} was written by an older ppl_vae; train into a new folder")
    old = FitConfig(**saved["config"])
    recorded = read_json(out / CONFIG) if (out / CONFIG).is_file() else {}
    recorded = {**recorded, "fit": asdict(old)}
    changed = _differences(recorded, run_info)
    if changed:
        raise CheckpointError(
            f"{out} holds another run than this one: {'; '.join(changed)}. Resume with "
            f"its settings (only {', '.join(RESUMABLE)} may change), or train into "
            "another folder"
        )
    if old.lr != config.lr and config.lr_schedule != "constant":
        raise CheckpointError(
            f"{out} follows the {config.lr_schedule!r} learning-rate schedule "
            f"from lr {old.lr}; resume with --lr {old.lr} (the schedule sets the rate)"
        )
    written_by = saved.get("processes", 1)
    if written_by != processes:
        how = "without torchrun" if written_by == 1 else f"--nproc-per-node {written_by}"
        raise CheckpointError(
            f"{path} was written by a run over {written_by} processes and this one has "
            f"{processes}; an exact resume needs as many (torchrun {how}), or "
            "evaluate it (ppl-vae evaluate), which any number of processes can"
        )
    return saved


def write_metrics(out: Path, history: list[dict[str, float]]) -> None:
    """``metrics.jsonl``, one line per epoch of ``history``, rewritten whole and atomically: a
    kill at any instant cannot log an epoch twice."""
    write_text(out / METRICS, "".join(json.dumps(record) + "\n" for record in history))
