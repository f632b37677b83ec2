# vaectl — `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DVC_REMOTE ?= $(abspath $(CURDIR)/../vaectl-dvc-remote)
SERVER_DIR ?= $(CURDIR)/mlflow-server
SERVER_PORT ?= 5001

.DEFAULT_GOAL := help
.PHONY: help setup test lint repro study literature ui screenshots server remote bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

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

study: setup ## The VAE-vs-AE study over beta and latent size, 3 seeds each (24 DVC experiments; 38 min)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/vaectl study

literature: setup ## The published VAE protocol on full Fashion-MNIST as DVC experiment fashion-literature (hours)
	flags="$$($(BIN)/vaectl overlay --dvc-flags params/fashion-literature.yaml)" && \
		PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc exp run -n fashion-literature $$flags

ui: setup ## MLflow UI on 127.0.0.1:5000 against mlruns/
	@echo "open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (MLflow 3's training view)"
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 \
		--backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns/artifacts

screenshots: setup ## MLflow UI and offline-report screenshots in headless Chromium, after make repro (docs/screenshots)
	$(BIN)/python benchmarks/screenshots.py

server: setup ## Shared MLflow tracking server on 127.0.0.1:5001 (sqlite + artifact root in SERVER_DIR)
	mkdir -p $(SERVER_DIR)
	$(BIN)/mlflow server --host 127.0.0.1 --port $(SERVER_PORT) \
		--backend-store-uri sqlite:///$(SERVER_DIR)/mlflow.db \
		--artifacts-destination $(SERVER_DIR)/artifacts

remote: setup ## Make DVC_REMOTE (a local directory) this clone's default DVC remote
	mkdir -p $(DVC_REMOTE)
	$(BIN)/dvc remote add --local --default --force local $(DVC_REMOTE)
	@echo "DVC remote 'local' -> $(DVC_REMOTE): now 'dvc push' / 'dvc pull'"

bench: setup ## Benchmarks: training throughput, IWAE cost, serving, 1 vs 2 processes (benchmarks/)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/iwae_cost.py
	$(BIN)/python benchmarks/serve_latency.py
	$(BIN)/python benchmarks/ddp_throughput.py

clean: ## Remove produced data, models, reports and MLflow runs (keeps .venv)
	rm -rf data/prepared models reports mlruns/mlflow.db mlruns/artifacts .pytest_cache
