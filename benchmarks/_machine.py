"""What the benchmarks print about the machine they ran on."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch

#: multiply-adds of one image through the seed network's encoder (784-300-300-2x50) and
#: decoder (50-300-300-784)
ENCODER_MACS = 784 * 300 + 300 * 300 + 300 * 100
DECODER_MACS = 50 * 300 + 300 * 300 + 300 * 784
#: matrix-product FLOP of one training step, forward and backward (3 products a layer), batch 100
STEP_FLOP = 2 * 3 * (ENCODER_MACS + DECODER_MACS) * 100


def loglik_flop(k: int) -> int:
    """Matrix-product FLOP of log p(x) for one image with K particles (the decoder, K times)."""
    return 2 * DECODER_MACS * k


def matmul_peak(threads: int | None = None, size: int = 1024, repeats: int = 20) -> float:
    """GFLOP/s of a float32 square matrix product, with ``threads`` threads (default: the
    current setting, which is left as it was)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    seconds = time.perf_counter() - start
    torch.set_num_threads(before)
    return 2 * size**3 * repeats / seconds / 1e9


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mnist_or_smoke(data_dir: str) -> Any:
    """MNIST from the IDX files in ``data_dir`` (dynamic binarization), or, where that folder
    does not exist, the embedded 5,000-image subset, so a benchmark also runs on a machine
    without the files."""
    from ppl_vae.data.datasets import load_dataset

    if Path(data_dir).is_dir():
        return load_dataset("mnist", data_dir=data_dir)
    return load_dataset("mnist5k")
