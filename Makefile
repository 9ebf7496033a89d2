# berth's Makefile. `make` alone lists the targets; each target's description is its
# `## ` comment.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

DATA_DIR ?= $(HOME)/.berth
PORT ?= 6443
TEST_TIMEOUT ?= 40m
KUBECTL ?= /usr/lib/google-cloud-sdk/bin/kubectl.1.33
GOBIN := $(shell go env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)

# What `make up` starts in the background: `berth up`, the control plane and a node agent
# that runs containerd of its own under DATA_DIR/agent.
UP_CMD = bin/berth up --data-dir $(DATA_DIR) --port $(PORT)

.PHONY: help deps build test test-unit test-integration check fmt-check vet lint boundaries tidy-check protos-check up down bench clean

help: ## List the targets
	@echo "Usage: make <target> [DATA_DIR=$(DATA_DIR)] [PORT=$(PORT)]"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-17s %s\n", $$1, $$2}'

deps: ## Install missing system packages and Go tools (idempotent)
	@scripts/install-deps.sh

build: ## Build every binary under cmd/ into bin/ (berth-testserver static, for its image)
	@mkdir -p bin
	@if [ -d cmd ]; then go build -o bin/ $$(go list ./cmd/... | grep -v '/cmd/berth-testserver$$'); else echo "no cmd/ yet: nothing to build"; fi
	@if [ -d cmd/berth-testserver ]; then CGO_ENABLED=0 go build -ldflags '-s -w' -o bin/berth-testserver ./cmd/berth-testserver; fi

test: deps build ## Install deps, build, run every test (unit, integration, conformance)
	@# -p 1: the suites on real containerd, CNI and loop devices share this host's bridges,
	@# iptables and pod networks; one package at a time keeps them apart (and off each
	@# other's CPU) at the cost of a few minutes.
	@log=$$(mktemp); trap 'rm -f "$$log"' EXIT; \
	rc=0; go test -p 1 -count=1 -timeout $(TEST_TIMEOUT) ./... 2>&1 | tee "$$log" || rc=$$?; \
	echo "----"; \
	echo "packages: $$(grep -cE '^ok ' "$$log" || true) ok, $$(grep -cE '^FAIL[[:space:]]' "$$log" || true) failed, $$(grep -cE '^\?' "$$log" || true) without tests"; \
	if [ $$rc -ne 0 ]; then echo "make test: FAILED"; grep -E '^(FAIL[[:space:]]|--- FAIL)' "$$log" || true; exit $$rc; fi; \
	echo "make test: PASSED"

test-unit: ## Run the unit tests only (go test -short)
	go test -short -count=1 ./...

test-integration: build ## Run the integration suite (test/integration) against bin/berth
	@if [ -d test/integration ]; then go test -count=1 -timeout $(TEST_TIMEOUT) ./test/integration/...; else echo "no test/integration yet"; fi

check: deps ## Run gofmt, vet, staticcheck, the import-boundary test, the go mod tidy and proto checks
	@$(MAKE) --no-print-directory -k fmt-check vet lint boundaries tidy-check protos-check

fmt-check: ## Fail when a Go file is not gofmt-formatted
	@files=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$files" ]; then echo "not gofmt-formatted (run gofmt -w):" >&2; echo "$$files" >&2; exit 1; fi; echo "gofmt: ok"

vet: ## go vet ./...
	go vet ./...

lint: ## staticcheck ./...
	staticcheck ./...

boundaries: ## The import-boundary test (design.md's arrows)
	go test -count=1 ./test/boundaries/

tidy-check: ## Fail when go mod tidy would change go.mod or go.sum
	@go mod tidy -diff && echo "go.mod and go.sum are tidy" || { echo "go.mod/go.sum are not tidy: run go mod tidy" >&2; exit 1; }

protos-check: ## Fail when the code generated from specs/**/*.proto is stale
	@scripts/check-protos.sh

up: deps build ## Start a single-node cluster (berth up: server + agent on containerd) on DATA_DIR and PORT
	@mkdir -p "$(DATA_DIR)"
	@if [ -f "$(DATA_DIR)/berth.pid" ] && kill -0 "$$(cat "$(DATA_DIR)/berth.pid")" 2>/dev/null; then \
		echo "berth is already running (pid $$(cat "$(DATA_DIR)/berth.pid"))"; \
	else \
		nohup $(UP_CMD) >>"$(DATA_DIR)/berth.log" 2>&1 </dev/null & echo $$! >"$(DATA_DIR)/berth.pid"; \
		echo "started berth up (pid $$(cat "$(DATA_DIR)/berth.pid")), log in $(DATA_DIR)/berth.log"; \
	fi
	@pid=$$(cat "$(DATA_DIR)/berth.pid"); deadline=$$((SECONDS + 120)); \
	until [ -f "$(DATA_DIR)/admin.kubeconfig" ] && $(KUBECTL) --kubeconfig "$(DATA_DIR)/admin.kubeconfig" --request-timeout=2s get nodes --no-headers 2>/dev/null | grep -q " Ready "; do \
		if ! kill -0 $$pid 2>/dev/null; then echo "berth exited; the end of $(DATA_DIR)/berth.log:" >&2; tail -n 20 "$(DATA_DIR)/berth.log" >&2; rm -f "$(DATA_DIR)/berth.pid"; exit 1; fi; \
		if [ $$SECONDS -ge $$deadline ]; then echo "no node became Ready within 120s (see $(DATA_DIR)/berth.log; make down stops it)" >&2; exit 1; fi; \
		sleep 0.5; \
	done
	@echo "berth is up: a single-node cluster. Use it with kubectl:"
	@echo "  export KUBECONFIG=$(DATA_DIR)/admin.kubeconfig"
	@echo "  kubectl get nodes"
	@echo "  kubectl run web --image=berth.local/testserver:1.0 --port=8080"
	@echo "  kubectl create deployment sleepers --image=berth.local/busybox:1.35 --replicas=3 -- sleep 3600"
	@echo "Stop it with: make down"

down: ## Stop the cluster started by make up (containers keep running in their shims)
	@f="$(DATA_DIR)/berth.pid"; \
	if [ ! -f "$$f" ]; then echo "berth is not running (no $$f)"; exit 0; fi; \
	pid=$$(cat "$$f"); \
	if kill -0 $$pid 2>/dev/null; then \
		kill -TERM $$pid; \
		for i in $$(seq 1 90); do kill -0 $$pid 2>/dev/null || break; sleep 0.5; done; \
		if kill -0 $$pid 2>/dev/null; then echo "berth (pid $$pid) did not stop within 45s; killing it" >&2; kill -KILL $$pid; fi; \
		echo "stopped berth (pid $$pid)"; \
	else \
		echo "berth (pid $$pid) was not running"; \
	fi; \
	rm -f "$$f"

bench: build ## Run the API benchmark (bin/berth bench api); record figures in docs/benchmarks.md
	bin/berth bench api

clean: ## Remove bin/ and test binaries (DATA_DIR is left alone)
	rm -rf bin/ *.test coverage.out coverage.html
