# tti-operator: every entry point a newcomer needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml setup.py scripts/venv.sh $(wildcard server/tti_server/grpc_api/protos/*.proto)
	@PYTHON=$(PYTHON) bash scripts/venv.sh $(VENV)

.PHONY: venv
venv: $(STAMP) ## Create .venv with the operator, the server and the dev tools

.PHONY: demo
demo: venv ## The main job: local cluster, chart, operator, a model, one image (DEMO_ARGS="--model sdxl-turbo")
	@$(PY) tests/e2e/demo.py $(DEMO_ARGS)

.PHONY: demo-server
demo-server: venv ## The server alone: start it with the stub model and generate one image
	@$(PY) -m tti_server.demo

.PHONY: lint
lint: venv ## ruff (lint + format check) and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: format
format: venv ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

.PHONY: test
test: venv cluster-build ## Run every test (lint, unit, server, cluster); sets up what it needs
	@$(MAKE) --no-print-directory lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

.PHONY: cluster-build
cluster-build: ## Build the test cluster's binaries (Kubernetes, etcd, kwok, helm) from Go modules; cached
	@bash tests/cluster/build-binaries.sh

.PHONY: cluster-up
cluster-up: cluster-build ## Start the local cluster (real control plane, simulated GPU nodes; NODES=2)
	@$(PYTHON) tests/cluster/launcher.py up --nodes $(or $(NODES),2)

.PHONY: cluster-down
cluster-down: ## Stop the local cluster, leaving no process behind
	@$(PYTHON) tests/cluster/launcher.py down
