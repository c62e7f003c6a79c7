"""Atomic checkpoints: write to a temporary file in the same folder, fsync, then rename."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT",
    "CheckpointError",
    "RunLock",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "share_equal",
    "read_json",
    "write_json",
    "write_text",
]


#: Tag written into every checkpoint; a file without it was not written by ppl_vae.
FORMAT = "ppl_vae-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model it is loaded into."""


def share_equal(state: Any, reference: Any) -> Any:
    """``state`` (nested dicts of tensors) with each tensor equal to the one at the same place
    in ``reference`` replaced by that one, so that ``torch.save`` writes it once: the best
    epoch's weights beside the current ones cost nothing where they are the same (the best
    epoch just ended, or buffers such as an autoregressive flow's masks)."""
    if isinstance(state, dict) and isinstance(reference, dict):
        return {k: share_equal(v, reference.get(k)) for k, v in state.items()}
    if (
        isinstance(state, torch.Tensor)
        and isinstance(reference, torch.Tensor)
        and state.dtype == reference.dtype
        and state.shape == reference.shape
        and state.device == reference.device
        and torch.equal(state, reference)
    ):
        return reference
    return state


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file or the new, never half.

    Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, or raise :class:`CheckpointError`
    (``FileNotFoundError`` if there is no file) with what to do about it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first (ppl-vae train --out DIR)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for damaged archives
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(e).__name__}: {e}). ppl_vae writes "
            "checkpoints atomically, so the file was damaged or replaced after writing; delete "
            "it and train again, or restore a copy"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a ppl_vae checkpoint (no {FORMAT!r} tag); pass the file written "
            "by ppl_vae.fit or `ppl-vae train`"
        )
    return state


def rng_state() -> dict[str, Any]:
    """The global random states that Pyro and PyTorch draw from, in a weights-only form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, doc: dict[str, Any]) -> None:
    """Write ``doc`` as JSON to ``path`` atomically."""
    write_text(path, json.dumps(doc, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """``path`` as JSON, or a :class:`CheckpointError` saying it is damaged."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); restore it or train again") from e


class RunLock:
    """``folder/.lock``, held while a run writes the folder: a second writer is refused at
    once, naming the first; a lock whose process is gone (killed) is stale and taken over.

    The file holds the owner's host and process id; it is created with ``O_EXCL``, so two
    processes cannot both take it.
    """

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / self.NAME
        self.held = False

    def acquire(self) -> RunLock:
        import socket

        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and self._alive(owner, me["host"]):
                    raise CheckpointError(
                        f"{self.path.parent} is being written by process {owner.get('pid')} on "
                        f"{owner.get('host')}; wait for it to finish or train into another "
                        f"folder (if that process is gone, delete {self.path})"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise CheckpointError(f"could not take {self.path}; another process keeps taking it")

    def _owner(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # half-written by a process killed at that instant: stale

    @staticmethod
    def _alive(owner: dict[str, Any], host: str) -> bool:
        if owner.get("host") != host:
            return True  # another machine's process: cannot tell, so respect it
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError, TypeError):
            return True
        return True

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
