# lmkit — every target sets up .venv itself on first use.
#   make run    the main job: the numbered notebooks in order (papermill) into runs/<time>-pipeline/
#               (PARAMS=notebooks/params/gpu.yaml picks bigger settings)
#   make test   the whole test suite (unit, reliability, notebooks): what CI runs
#   make test-fast  unit and reliability tests, no notebooks, browser or torchrun (2 minutes on 2 cores)
#   make lab    JupyterLab in the venv
#   make bench  the benchmark suite (not tests): ARGS="train generation" runs some; results in benchmarks/results/
#   make sweep NB=03_training ARGS="-p n_layer 2 4 -p learning_rate 1e-3 3e-3"
#               one notebook over a parameter grid (papermill) into runs/<time>-sweep-<notebook>/
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup run test test-fast lab bench sweep lint clean notebook-outputs

setup: $(STAMP)

# torch goes in first, alone, at the version pinned in requirements.txt: installed after a package
# that depends on it, pip could pull a multi-GB CUDA build on a CPU-only machine.
# setuptools' notice about editable installs (UserWarning) is for package authors, not for a user.
$(STAMP): requirements.txt pyproject.toml
	@echo "setting up $(VENV)/ (about 2 minutes and 2 GB the first time; pip works quietly)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$$(grep -E '^torch==' requirements.txt)"
	$(PIP) install -r requirements.txt
	PYTHONWARNINGS=ignore::UserWarning $(PIP) install --no-deps -e .
	touch $@
	@echo "$(VENV)/ is ready"

run: $(STAMP)
	$(PY) -m lmkit run $(if $(PARAMS),-f $(PARAMS))

# The notebooks under nbval run with their defaults; LMKIT_RUNS_DIR sends their runs to a temporary
# folder, removed afterwards, so they do not show up among yours in runs/ (05 would score them).
test: $(STAMP)
	runs=$$(mktemp -d -t lmkit-test-runs.XXXXXX); \
	LMKIT_RUNS_DIR=$$runs $(PY) -m pytest $(PYTEST_ARGS); status=$$?; rm -rf "$$runs"; exit $$status

# The maintainer's loop: tests/ only (no nbval replays), without the notebook, browser and torchrun
# tests (pytest markers), one pytest worker per core (pytest-xdist) with one torch thread each: tiny
# models lose more to thread hand-offs than they gain. `make test` stays the whole suite, in order.
test-fast: $(STAMP)
	runs=$$(mktemp -d -t lmkit-test-runs.XXXXXX); \
	LMKIT_RUNS_DIR=$$runs OMP_NUM_THREADS=1 $(PY) -m pytest tests -n auto \
	  -m "not notebook and not browser and not distributed" $(PYTEST_ARGS); status=$$?; rm -rf "$$runs"; exit $$status

# Kernels get CurveZMQ keys from the server (encrypted sockets; ipykernel then has nothing to warn about).
lab: $(STAMP)
	$(PY) -m jupyter lab notebooks/ --MappingKernelManager.transport_encryption=$$($(PY) -c \
	  "import zmq; print('auto' if zmq.has('curve') else 'disabled')")

bench: $(STAMP)
	$(PY) -m benchmarks $(ARGS)

sweep: $(STAMP)
	$(PY) -m lmkit sweep $(NB) $(ARGS)

# After editing a notebook: run the pipeline with defaults and store the outputs of the cells
# tagged nbval-check-output (the ones `make test` compares); all other outputs are cleared.
notebook-outputs: $(STAMP)
	$(PY) -m lmkit run --store-checked-outputs

lint: $(STAMP)
	$(PY) -m ruff check lmkit tests

clean:
	rm -rf $(VENV) runs data/prepared .pytest_cache
