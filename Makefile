# vaectl — `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DVC_REMOTE ?= $(abspath $(CURDIR)/../vaectl-dvc-remote)
SERVER_DIR ?= $(CURDIR)/mlflow-server
SERVER_PORT ?= 5001

.DEFAULT_GOAL := help
.PHONY: help setup setup-cpu lock test test-fast lint quickstart exps repro study study-full literature ui screenshots server team-up team-down team-remote remote plots-template bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

LOCK   := requirements.lock
# the lock is resolved for CI's interpreter and platform; where a pip constraints file caps
# versions on this machine (torch served from local disk), the lock honours it
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28
PIP_CAP ?= $(wildcard /etc/xdg/pip/constraints.txt)

# The lock goes in with uv (itself installed first, from the lock, hash-checked): every package
# hash-checked and unpacked on every core, ~25 s where pip took ~110. `pip check` then confirms
# the whole, and the byte-compiling pip would do runs on every core (what does not compile is
# what pip skips too: templates shipped as .py). 121 s -> 44 s from a fresh clone on 2 cores.
# uv reads no pip configuration: PIP_SOURCES hands it pip's indexes and find-links (here,
# wheels on local disk), --system-certs the system's CA store (pip's `cert`), and with every
# hash pinned it may take a file from any index (unsafe-best-match: a look-alike cannot match).
define PIP_SOURCES
import os, subprocess, sys
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
args = []
for line in listing.splitlines():
    key, _, value = line.partition("=")
    option = key.rsplit(".", 1)[-1]
    if option in ("index-url", "extra-index-url", "find-links"):
        for source in value.strip("'\"").split():
            local = source.removeprefix("file://") if "://" not in source.removeprefix("file://") else None
            if local is not None and not os.path.exists(local):
                continue  # pip skips a local source that is not there; uv would stop on it
            if source not in args and not (option == "index-url" and "--index-url" in args):
                args += [f"--{option}", source]
print(" ".join(args))
endef
export PIP_SOURCES
UV_EXACT := $(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps --require-hashes --system-certs \
	--index-strategy unsafe-best-match

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing $(LOCK) exactly (hash-checked; about 200 packages, torch's with its CUDA libraries, ~6.5 GB)"
	awk '/^[^ #]/ {keep = ($$0 ~ /^uv==/)} keep' $(LOCK) > $(VENV)/lock-uv.txt
	$(BIN)/pip install --disable-pip-version-check --quiet --no-deps --require-hashes -r $(VENV)/lock-uv.txt
	$(UV_EXACT) $$($(BIN)/python -c "$$PIP_SOURCES") -r $(LOCK)
	$(BIN)/pip check
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	$(BIN)/pip install --disable-pip-version-check --no-deps --no-build-isolation --quiet -e .
	touch $(STAMP)

setup: $(STAMP) ## Create .venv, install requirements.lock exactly and vaectl (editable); fast when done

# the CPU-only variant: the lock without torch's CUDA build and libraries, then the same torch
# and torchvision versions from PyTorch's CPU index (a different build, not hash-pinned)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
CUDA_ONLY := ^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==

setup-cpu: ## setup with the CPU-only build of the locked torch (a ~2 GB venv instead of ~6.5; docs/reproducibility.md)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	awk '/^[^ #]/ {skip = ($$0 ~ /$(CUDA_ONLY)/)} !skip' $(LOCK) > $(VENV)/requirements-cpu.lock
	$(BIN)/pip install --disable-pip-version-check --progress-bar on --require-hashes -r $(VENV)/requirements-cpu.lock
	$(BIN)/pip install --disable-pip-version-check --index-url $(TORCH_CPU_INDEX) \
		$$(grep -Eo '^(torch|torchvision)==[^ ]+' $(LOCK))
	$(BIN)/pip install --disable-pip-version-check --no-deps --no-build-isolation --quiet -e .
	touch $(STAMP)

lock: setup ## Re-resolve requirements.lock from pyproject.toml; UPGRADE=pkg moves one package to its newest
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra team --generate-hashes $(LOCK_TARGET) \
		--custom-compile-command "make lock" $(if $(PIP_CAP),--constraint $(PIP_CAP)) \
		$(if $(UPGRADE),--upgrade-package $(UPGRADE)) --output-file $(LOCK)

# one worker per core (pytest-xdist); PYTEST_WORKERS=0 runs them in this process, one by one.
# Modules are dealt out whole, longest first (tests/conftest.py), so test_pipeline.py's tiny
# pipeline is built once, not once a worker (108 s each on 2 cores). (--dist loadgroup would
# group finer, but xdist 3.8 cannot tag test ids under pytest 9: it groups nothing.)
PYTEST_WORKERS ?= auto
PYTEST_XDIST := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: setup ## Run the test suite (unit tests + one tiny end-to-end dvc repro), a worker per core
	$(BIN)/pytest -q $(PYTEST_XDIST)

test-fast: setup ## The edit loop: every test but the e2e ones (processes, servers, pipelines)
	$(BIN)/pytest -q $(PYTEST_XDIST) -m "not e2e"

lint: setup ## Ruff lint and format check, mypy on src/
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# in a temporary copy of the repo (dvc exp run --temp), logging to this clone's MLflow store
quickstart: setup ## Every stage on params/quickstart.yaml (8 epochs, small samples) as DVC experiment quickstart; ~2.5 min
	flags="$$($(BIN)/vaectl overlay --dvc-flags params/quickstart.yaml)" && \
		PATH=$(CURDIR)/$(BIN):$$PATH MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} \
		$(BIN)/dvc exp run --temp --force -n quickstart $$flags
	@where="the local store ('make ui' shows them)"; [ -z "$${MLFLOW_TRACKING_URI:-}" ] || \
		where="the store MLFLOW_TRACKING_URI names"; \
		echo "quickstart done: 'dvc exp show' lists it; its runs (tag dvc.exp_name=quickstart) are in $$where;"
	@echo "'dvc exp apply quickstart' puts its outputs in the workspace (git checkout . && dvc checkout undoes it)"

# summary.json's headline, always; params only where experiments differ; no dependency hashes
exps: setup ## The experiments at 120 columns: the params each changed, the headline of summary.json (vaectl exps)
	$(BIN)/vaectl exps $(ARGS)

repro: setup ## Run the whole DVC pipeline on params.yaml, independent stages side by side (vaectl repro)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/vaectl repro

study: setup ## The VAE-vs-AE study, fast grid: 4 settings x 5 seeds (20 DVC experiments; see docs/results.md)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/vaectl study

study-full: setup ## The full grid: 8 settings x 5 seeds (40 DVC experiments; 1 h 50 min) -> reports/study-full
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/vaectl study --overlay params/study-full.yaml --out reports/study-full

literature: setup ## The published VAE protocol on full Fashion-MNIST as DVC experiment fashion-literature (hours)
	flags="$$($(BIN)/vaectl overlay --dvc-flags params/fashion-literature.yaml)" && \
		PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc exp run -n fashion-literature $$flags

# One web worker each, and none of MLflow 3's job runners (GenAI judges and prompt optimisation,
# which vaectl does not use): 2 processes and 0.5 GiB instead of 15 and 2.6 GiB. A server for
# a larger team: SERVER_WORKERS=4.
UI_WORKERS ?= 1
SERVER_WORKERS ?= 1
MLFLOW_NO_JOBS := MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

ui: setup ## MLflow UI on 127.0.0.1:5000 against the repo's store (mlflow.db, artifacts in mlruns/); UI_WORKERS=1
	@echo "open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (MLflow 3's training view)"
	$(MLFLOW_NO_JOBS) $(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --workers $(UI_WORKERS) \
		--backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns/artifacts

screenshots: setup ## MLflow UI and offline-report screenshots in headless Chromium, after make repro (docs/screenshots)
	$(BIN)/python benchmarks/screenshots.py

server: setup ## Shared MLflow tracking server on 127.0.0.1:5001 (sqlite + artifact root in SERVER_DIR)
	mkdir -p $(SERVER_DIR)
	$(MLFLOW_NO_JOBS) $(BIN)/mlflow server --host 127.0.0.1 --port $(SERVER_PORT) --workers $(SERVER_WORKERS) \
		--backend-store-uri sqlite:///$(SERVER_DIR)/mlflow.db \
		--artifacts-destination $(SERVER_DIR)/artifacts

# The team stack (src/vaectl/team.py; settings VAECTL_TEAM_* in the environment, docs/deployment.md):
# real PostgreSQL, SeaweedFS and MLflow servers, their state in VAECTL_TEAM_DIR (.team by default)
team-up: setup ## Team stack on this host: PostgreSQL + SeaweedFS (S3) + an MLflow server on both
	$(BIN)/python -m vaectl.team up

team-down: setup ## Stop the team stack (its data stays in VAECTL_TEAM_DIR)
	$(BIN)/python -m vaectl.team down

team-remote: setup ## The team stack's S3 bucket as this clone's DVC remote (keys in .dvc/config.local)
	$(BIN)/python -m vaectl.team remote

# `dvc plots show`'s page loads vega, vega-lite and vega-embed from a CDN: offline its Vega plots
# are blank. .dvc/plots/offline.html (`plots.html_template` in .dvc/config) is DVC's page with
# the versions DVC loads inlined, each as npm packs it, its sha512 checked against the registry's.
VEGA_LIBS := vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
PLOTS_TEMPLATE := .dvc/plots/offline.html
define OFFLINE_TEMPLATE
import base64, hashlib, json, pathlib, subprocess, sys, tarfile, tempfile
scripts = []
with tempfile.TemporaryDirectory() as tmp:
    for spec in sys.argv[2:]:
        name = spec.rsplit("@", 1)[0]
        packed = json.loads(subprocess.run(["npm", "pack", "--json", "--pack-destination", tmp, spec], capture_output=True, text=True, check=True).stdout)[0]
        data = pathlib.Path(tmp, packed["filename"]).read_bytes()
        if "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode() != packed["integrity"]:
            sys.exit(f"{spec}: the tarball does not match npm's integrity")
        with tarfile.open(pathlib.Path(tmp, packed["filename"])) as archive:
            js = archive.extractfile(f"package/build/{name}.min.js").read().decode()
            licence = archive.extractfile("package/LICENSE").read().decode()
        scripts.append(f"<!-- {spec} ({packed['integrity']}), build/{name}.min.js; its LICENSE:\n{licence.strip()}\n-->\n<script>{js}</script>")
page = ("<!DOCTYPE html>\n<html>\n<head>\n{refresh_tag}\n<title>DVC plots (offline)</title>\n"
        + "\n".join(scripts)
        + "\n<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n")
pathlib.Path(sys.argv[1]).write_text(page)
endef
export OFFLINE_TEMPLATE

plots-template: ## Rebuild .dvc/plots/offline.html (dvc plots show offline) from npm: make plots-template
	mkdir -p $(dir $(PLOTS_TEMPLATE))
	$(PYTHON) -c "$$OFFLINE_TEMPLATE" $(PLOTS_TEMPLATE).tmp $(VEGA_LIBS) && mv $(PLOTS_TEMPLATE).tmp $(PLOTS_TEMPLATE)

remote: setup ## Make DVC_REMOTE (a local directory) this clone's default DVC remote
	mkdir -p $(DVC_REMOTE)
	$(BIN)/dvc remote add --local --default --force local $(DVC_REMOTE)
	@echo "DVC remote 'local' -> $(DVC_REMOTE): now 'dvc push' / 'dvc pull'"

bench: setup ## Benchmarks: training throughput, IWAE cost, serving, 1 vs 2 processes, portable vs fast numerics, memory estimates, the pipeline at 1 vs 2 jobs, the team server under 8 clients
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/iwae_cost.py
	$(BIN)/python benchmarks/serve_latency.py
	$(BIN)/python benchmarks/ddp_throughput.py
	$(BIN)/python benchmarks/numerics_cost.py
	$(BIN)/python benchmarks/memory_estimates.py
	$(BIN)/python benchmarks/pipeline_speed.py --params tiny --jobs 1 2
	$(BIN)/python benchmarks/team_load.py --clients 8 --epochs 50

# only what git ignores (the outputs DVC, MLflow and the tools write) under these paths: every
# tracked file (the committed reports and study results) and every file of yours stays
REBUILT := data/prepared models export deploy reports mlruns mlflow.db mlflow.register.lock \
	predictions.npz dvc_plots .pytest_cache .ruff_cache .mypy_cache

clean: ## Remove what the pipeline rebuilds: git-ignored outputs, the MLflow store, caches (keeps .venv, tracked files and yours)
	git clean -fdXq -- $(REBUILT)
