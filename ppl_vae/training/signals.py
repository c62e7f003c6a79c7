"""Ctrl-C and SIGTERM held until a step ends."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Terminated"]


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler or a container stopping the run), handled as Ctrl-C is:
    the current step finishes, the checkpoint is written, then this is raised."""


@contextmanager
def _deferred_interrupt() -> Iterator[Callable[[], int | None]]:
    """Hold Ctrl-C and SIGTERM until the current step ends, so a checkpoint never sees half an
    update; the callable returns the signal that came, if one did."""
    hit: dict[str, int | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def handler(signum: int, frame: Any) -> None:
        if hit["signal"] is not None:  # a second signal stops at once
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        hit["signal"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: hit["signal"]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _stop_if(interrupted: Callable[[], int | None], everywhere: bool | None = None) -> None:
    """Raise for the signal that came; under torch.distributed, ``everywhere`` is whether any
    process got one (all of them must stop at the same step)."""
    sig = interrupted()
    if everywhere is None:
        everywhere = sig is not None
    if everywhere:
        raise Terminated if sig == signal.SIGTERM else KeyboardInterrupt
