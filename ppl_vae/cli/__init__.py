"""The ``ppl-vae`` command line."""

from .parser import build_parser, main
from .runs import (
    Run,
    RunConfig,
    check_device,
    check_features,
    choose_binarization,
    load_data,
    open_run,
    read_config,
    run_device,
)

__all__ = [
    "Run",
    "RunConfig",
    "build_parser",
    "check_device",
    "check_features",
    "choose_binarization",
    "load_data",
    "main",
    "open_run",
    "read_config",
    "run_device",
]
