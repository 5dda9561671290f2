# swan-anomaly: two commands for a fresh clone.
#   make demo   create .venv, install everything, run the whole DAG once on the embedded default
#   make test   create the same environment if missing (plus Azurite from npm), run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export SWAN_HOME ?= $(CURDIR)/.swan
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
# `make airflow` serves the UI and API on this machine only (Airflow's own default is every interface, 0.0.0.0)
export AIRFLOW__API__HOST ?= 127.0.0.1

.PHONY: demo test lint airflow mlflow-ui stop-endpoint clean venv

venv: $(STAMP)

# torch is pinned to 2.13.0 and installed first, so that no dependency pulls another build. On Linux
# without an NVIDIA driver (no nvidia-smi) it comes from PyTorch's CPU index: the CPU wheel, without
# gigabytes of CUDA libraries (2.13.0+cpu sorts above PyPI's 2.13.0). Override it:
#   make demo TORCH_INDEX_URL=                                          PyPI's default build
#   make demo TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128    another PyTorch index
NO_NVIDIA := $(and $(filter Linux,$(shell uname -s)),$(if $(shell command -v nvidia-smi 2>/dev/null),,yes))
TORCH_INDEX_URL ?= $(if $(NO_NVIDIA),https://download.pytorch.org/whl/cpu)
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0" $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

# Test services from the npm registry (Azurite, the Azure Storage emulator), pinned by package-lock.json.
NODE_STAMP := node_modules/.installed
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

demo: $(STAMP)
	$(PY) scripts/demo.py

# Lint first (seconds), then the tests and the doctests of include/ and plugins/.
# PYTEST_ARGS="-m 'not slow'" is the few-minute inner loop; CI runs everything.
test: lint $(NODE_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The real Airflow (api-server + UI, scheduler with the LocalExecutor, dag-processor, triggerer) with this
# project's folders: http://localhost:8080. The pool `swan_training` (1 slot) must exist before tasks that use it run.
airflow: $(STAMP)
	$(VENV)/bin/airflow db migrate > /dev/null
	$(VENV)/bin/airflow pools set "$${SWAN_POOL:-swan_training}" 1 "one run trains at a time" > /dev/null
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PYTHONPATH="$(CURDIR)/plugins:$(CURDIR)/include" airflow standalone

mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(SWAN_HOME)/mlflow/mlflow.db --port 5000

STOP_ENDPOINT := from swan_anomaly.config import Settings; from swan_anomaly.serving.local import stop_local_server; print('stopped' if stop_local_server(Settings.from_env()) else 'no local endpoint running')

stop-endpoint: $(STAMP)
	$(PY) -c "$(STOP_ENDPOINT)"

# without a working environment there is no server of this checkout to stop: clean never installs or updates one
clean:
	-@if [ -x $(PY) ]; then $(PY) -c "$(STOP_ENDPOINT)"; fi
	rm -rf .swan .airflow
