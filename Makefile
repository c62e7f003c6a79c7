# Two commands: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/demo

.PHONY: demo test bench clean

# torch and torchvision come together from the package registry (torchvision has no build for
# the CPU-only torch wheel some machines keep on disk).
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# setuptools warns at every editable install of a package at the project's root (this
	@# layout, by design): a warning no user caused or can act on
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/ppl-vae train --dataset mnist5k --preset seed --epochs 100 --patience 10 --eval-samples 1000 --overwrite --out $(OUT)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
