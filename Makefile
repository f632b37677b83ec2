# vaectl — `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup test lint repro ui bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-8s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## Create .venv and install vaectl (editable, dev extras); fast when already done

test: setup ## Run the test suite (unit tests + one tiny end-to-end dvc repro)
	$(BIN)/pytest -q

lint: setup ## Ruff lint
	$(BIN)/ruff check src tests benchmarks

repro: setup ## Run the whole DVC pipeline on params.yaml (cached stages are skipped)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

ui: setup ## MLflow UI on 127.0.0.1:5000 against mlruns/
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 \
		--backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns/artifacts

bench: setup ## Benchmarks: training throughput, IWAE cost (see benchmarks/)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/iwae_cost.py
	$(BIN)/python benchmarks/serve_latency.py

clean: ## Remove produced data, models, reports and MLflow runs (keeps .venv)
	rm -rf data/prepared models reports mlruns/mlflow.db mlruns/artifacts .pytest_cache
