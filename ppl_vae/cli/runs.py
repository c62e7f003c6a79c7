"""A run folder: ``config.json`` (how to rebuild the program and reload its data), the checkpoint,
the metrics and the pictures; and the programs the CLI builds, built-in or from a factory."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ppl_vae.cli.config import RunConfig, check_device
from ppl_vae.data.datasets import load_dataset
from ppl_vae.data.splits import DataSplits, binarize_splits
from ppl_vae.models.build import build_program
from ppl_vae.program import Program, ProgramError, as_program, binary_observation
from ppl_vae.training.checkpoint import CheckpointError, load_checkpoint
from ppl_vae.training.config import FitConfig
from ppl_vae.training.folder import CHECKPOINT, CONFIG
from ppl_vae.training.preflight import first_trace

__all__ = [
    "Run",
    "RunConfig",
    "check_device",
    "check_features",
    "choose_binarization",
    "load_data",
    "open_run",
    "read_config",
    "run_device",
]


def run_device(requested: str | None, doc: dict[str, Any]) -> torch.device:
    """Where to open a run: ``requested`` (checked), else the device it trained on when this
    machine has it, else the CPU (a run trained on a GPU opens on a machine without one)."""
    if requested is not None:
        return check_device(requested)
    recorded = doc.get("run", {}).get("device") or "cpu"
    try:
        return check_device(recorded)
    except ValueError:
        return torch.device("cpu")


def choose_binarization(requested: str, program: Program, x: torch.Tensor) -> str:
    """``auto`` becomes ``dynamic`` when the program observes ``x`` (a few rows) with a
    Bernoulli likelihood and ``none`` otherwise; an explicit binarization under another
    likelihood is an error with a hint."""
    binary = binary_observation(program.model, program.guide, x)
    if requested == "auto":
        return "dynamic" if binary else "none"
    if requested != "none" and not binary:
        raise ValueError(
            f"--binarize {requested} only goes with a Bernoulli likelihood, and {program.name} "
            "observes the data with another one; drop --binarize (auto keeps grey levels as "
            "they are) or use --likelihood bernoulli"
        )
    return requested


def load_data(run: RunConfig | dict[str, Any], seed: int = 0) -> DataSplits:
    """The dataset a run config (or a recorded data spec) names, split and binarized."""
    if isinstance(run, RunConfig):
        spec = {
            "dataset": run.dataset,
            "data_dir": run.data_dir,
            "binarization": run.binarize,
            "seed": seed,
        }
        if run.val_size is not None:
            spec["val_size"] = run.val_size
        if run.image_size is not None:
            spec["image_size"] = list(run.image_hw())
        if run.colour != "auto":
            spec["colour"] = run.colour
        download = run.download
    else:
        spec, download = run, False
    data = load_dataset(
        spec["dataset"],
        data_dir=spec.get("data_dir"),
        download=download,
        binarization="none",
        seed=spec.get("seed", seed),
        val_size=spec.get("val_size"),
        **{k: spec[k] for k in ("image_size", "colour") if k in spec},
    )
    binarization = spec.get("binarization", "none")
    if binarization == "auto":
        return data
    return binarize_splits(data, binarization, spec.get("seed", seed))


@dataclass
class Run:
    """A run folder read back: its program (weights loaded, eval mode), the data spec it was
    trained on (None if fit was given tensors), its fit settings and the rest of config.json."""

    program: Program
    data: dict[str, Any] | None
    fit: FitConfig
    info: dict[str, Any]

    @property
    def x_dim(self) -> int | None:
        recipe = self.program.recipe or {}
        return recipe.get("kwargs", {}).get("x_dim")


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``run_dir/config.json``, or an error that says how to make a run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder (no {CONFIG}); make one with "
            f"`ppl-vae train --out {run_dir}` or fit(..., out={str(run_dir)!r})"
        )
    try:
        return json.loads((run_dir / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{run_dir / CONFIG} is not valid JSON: {e}") from e


def open_run(
    run_dir: str | os.PathLike,
    example: Any = None,
    device: str | None = None,
    program: Any = None,
) -> Run:
    """Rebuild the program of a run folder and load its trained weights (the best epoch's,
    when patience kept them).

    Args:
        run_dir: a folder written by ``fit(..., out=...)`` or ``ppl-vae train``.
        example: a batch to run the program on once, which creates the ``pyro.param``
            tensors of a program that has them (needed before loading into them).
        device: where to put the program's modules (default: the run's).
        program: the program itself, for a run whose program was built by hand in Python
            (config.json then has no recipe).
    """
    run_dir = Path(run_dir)
    doc = read_config(run_dir)
    fit_config = FitConfig(**doc["fit"])
    if program is not None:
        prog = as_program(program)
    elif doc.get("program") is None:
        raise ProgramError(
            f"{run_dir} was trained on a program built by hand in Python, which it cannot "
            "rebuild; in Python pass it: open_run(dir, program=obj). To get folders the CLI "
            "can read, build with build_vae(...) or ppl_vae.models.load_factory(...), or train "
            "with `ppl-vae train --model FILE.py:factory`"
        )
    else:
        x_dim = doc["program"].get("kwargs", {}).get("x_dim")
        prog = build_program(doc["program"], x_dim)
    device = run_device(device, doc)
    state = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
    if "train" not in state:
        raise CheckpointError(
            f"{run_dir / CHECKPOINT} was written by an older ppl_vae; train the run again"
        )
    saved = state["train"]["best_state"] or state["program"]
    # the weights' own floating dtype (a run trained in float64 opens in float64)
    dtype = next(
        (
            t.dtype
            for module_state in saved["modules"].values()
            for t in module_state.values()
            if t.is_floating_point()
        ),
        None,
    )
    for _, module in prog.modules():
        module.to(device=device, dtype=dtype)
    if saved["params"]:
        if example is None:
            raise ProgramError(
                f"{prog.name} keeps pyro.param tensors; open_run needs an example batch to "
                "create them before loading"
            )
        first_trace(prog, example if isinstance(example, tuple) else (example,), "the data")
    try:
        prog.load_state_dict(saved)
    except ProgramError as e:
        raise CheckpointError(
            f"{run_dir / CHECKPOINT} does not match {run_dir / CONFIG}: {e}"
        ) from e
    prog.train(False)
    return Run(prog, doc.get("data"), fit_config, doc)


def check_features(run: Run, x: torch.Tensor, what: str) -> None:
    """A clear error when data does not have the features the saved model was trained on."""
    x_dim = run.x_dim
    if x_dim is not None and x.shape[1] != x_dim:
        raise ValueError(
            f"{what} has {x.shape[1]} features per row but the saved model expects {x_dim}; "
            "evaluate it on the dataset it was trained on (or train a new model on this one)"
        )
