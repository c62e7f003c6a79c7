"""Shared fixtures: each test starts with a clean parameter store, validation on, seeds set."""

import sys
from pathlib import Path

import pyro
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import linear_gaussian as a module


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
