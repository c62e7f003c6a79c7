"""The files of a run folder and how a resumed run is told from another."""

from __future__ import annotations

from typing import Any

from ppl_vae.training.config import RESUMABLE

__all__ = []


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
