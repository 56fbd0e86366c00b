# xdpcache: `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
CLANG ?= clang-19
export CLANG

# Debian packages the build, tests, benchmarks and demo need. `make deps` installs the missing ones.
APT_PACKAGES := clang-19 llvm-19 libbpf-dev memcached libmemcached-tools iproute2 ethtool jq \
	nutcracker python3 python3-pymemcache python3-pylibmc prometheus
BIN := bin/xdpcache

.DEFAULT_GOAL := help

help: ## List the targets with what they do.
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## Install missing Debian packages (needs root) and download Go modules.
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: missing Debian packages:$$missing (run as root to install them)" >&2; exit 1; fi; \
		echo "make deps: installing$$missing" >&2; \
		apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
		case " $$missing " in *" prometheus "*) systemctl stop prometheus prometheus-node-exporter >/dev/null 2>&1 || true;; esac; \
	fi
	@# Debian's packages start system daemons the tests do not want: memcached on 11211 and nutcracker
	@# on 22121 (always stopped), prometheus on 9090 with node-exporter on 9100 (stopped only when
	@# installed here: a Prometheus already running is the machine's own). The tests start their own.
	@for s in memcached nutcracker; do systemctl stop $$s >/dev/null 2>&1 || true; done
	$(GO) mod download

# root is a prerequisite of the targets that load BPF programs, attach XDP or create network
# namespaces: without root they stop at once and say so, rather than skip or fall back silently.
root:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "make $(MAKECMDGOALS): needs root (BPF programs, XDP, network namespaces): run it in a root shell" >&2; \
		exit 1; \
	fi

build: ## Build bin/xdpcache.
	$(GO) build -o $(BIN) ./cmd/xdpcache

generate: ## Compile the XDP program with clang and regenerate the bpf2go Go bindings.
	$(GO) generate ./bpf/...

check-generated: generate ## Fail if the committed bpf2go output differs from a fresh generate.
	@git diff --exit-code -- bpf/ || { echo "bpf2go output is stale: run 'make generate' and commit" >&2; exit 1; }

test: root deps ## Run every test, privileged BPF/XDP/netns tests included, and a short fuzz run (root).
	$(MAKE) check-generated
	$(MAKE) lint
	$(GO) test -race -count=1 -timeout 40m ./...
	$(MAKE) fuzz-short

fuzz-short: ## Run each fuzz target briefly.
	@./scripts/fuzz.sh 10s

bench: deps build ## Benchmarks side by side with their baselines (the XDP one as root only); see docs/BENCHMARKS.md.
	./scripts/bench.sh

experiment: root deps build ## The four experiments (root, ~6.5 min): mix, throughput, cpu, sweep; see docs/EXPERIMENTS.md.
	BIN=$(BIN) ./scripts/experiment-all.sh

lint: ## gofmt and go vet.
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed: $$bad" >&2; exit 1; fi
	$(GO) vet ./...

demo: root deps build ## Run the kernel path against a Zipf load in two network namespaces and print the split (root).
	./$(BIN) demo

.PHONY: help root deps build generate check-generated test fuzz-short bench experiment lint demo
