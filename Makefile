# tti-operator: every entry point a newcomer needs. `make help` lists them.
# The set-up steps print one line each; their whole output goes to build/logs/, and a step
# that fails names its log (scripts/step.sh).
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
demo: venv node-deps ## The main job: local cluster with a real node, chart, operator pod, a model pod, one image (DEMO_ARGS="--model sdxl-turbo")
	@$(PY) -m localcluster.demo $(DEMO_ARGS)

.PHONY: demo-server
demo-server: venv ## The server alone with the stub model: one image, then the playground's URL
	@$(PY) -m tti_server.tools.demo

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
test: venv node-deps browser cluster-build ## Run every test (lint, unit, server, browser, cluster, real pods); sets up what it needs
	@bash scripts/step.sh lint "lint: ruff, ruff format --check, mypy --strict" \
		$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory images
	@echo "==> the tests: pytest $(PYTEST_ARGS)"
	@$(VENV)/bin/pytest $(PYTEST_ARGS)

.PHONY: browser
browser: ## Install Debian's chromium for the playground's browser tests (apt-get; quick when present)
	@bash scripts/debian-packages.sh browser

.PHONY: cluster-build
cluster-build: ## Build the test cluster's binaries (Kubernetes, kubelet, etcd, CoreDNS, kwok, helm) from Go modules; cached
	@bash localcluster/build-binaries.sh

.PHONY: node-deps
node-deps: ## Install the Debian packages the real node needs (containerd, runc, CNI plugins, buildah)
	@bash scripts/debian-packages.sh node

.PHONY: cluster-up
cluster-up: node-deps cluster-build ## Start the local cluster: real control plane and node, simulated GPU nodes (NODES=2, REAL_NODE=0)
	@TTI_REAL_NODE=$(or $(REAL_NODE),1) $(PYTHON) -m localcluster.launcher up --nodes $(or $(NODES),2)

.PHONY: images
images: venv node-deps cluster-build ## Build the real node's images (tti-server, tti-operator) with buildah; cached until an input changes
	@$(PY) -m localcluster.launcher images

.PHONY: cluster-down
cluster-down: ## Stop the local cluster, leaving no process, mount, bridge, iptables chain or cgroup behind
	@$(PYTHON) -m localcluster.launcher down
