"""Whether torch.compile can build CPU kernels here, and its logging kept quiet."""

from __future__ import annotations

__all__ = ["compiler_available", "quiet_inductor"]


def compiler_available() -> bool:
    """Whether ``torch.compile`` can build CPU kernels here (a C++ compiler is on the path)."""
    import shutil

    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def quiet_inductor() -> None:
    """Silence the warning inductor's CPU build logs when it finds no CUDA toolkit."""
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
