# raftflow: `make cluster` starts a local three-node cluster (NODES=5: five, the last two
# joining), `make cluster-join` adds a node to it, `make test` runs every test.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(CURDIR)/target
export RAFTFLOW_BIN := $(CARGO_TARGET_DIR)/release/raftflow
export CLUSTER_DIR := $(CURDIR)/.cluster
export RAFTFLOW_GROUPS ?= 8
# One profile for the binary, unit tests and cluster tests, so RocksDB is built once.
CARGO_PROFILE := --release

.PHONY: deps build deploy-check cluster cluster-join cluster-stop cluster-status mutants test test-console jepsen lint fmt bench profile

deps:
	@scripts/deps.sh build

build: deps
	cargo build $(CARGO_PROFILE) --bin raftflow

cluster: build
	@scripts/cluster.sh start

cluster-join: build
	@scripts/cluster.sh join

cluster-stop:
	@scripts/cluster.sh stop

cluster-status:
	@scripts/cluster.sh status

# The failure suite also needs a binary with the deliberately broken guarantees compiled in.
mutants: deps
	cargo build $(CARGO_PROFILE) --features mutants --bin raftflow
	cp $(RAFTFLOW_BIN) $(RAFTFLOW_BIN)-mutants

test: deps mutants
	@scripts/deps.sh test
	cargo build $(CARGO_PROFILE) --workspace --all-targets
	cargo test $(CARGO_PROFILE) --workspace -- --test-threads=2
	@$(MAKE) --no-print-directory test-console
	@$(MAKE) --no-print-directory deploy-check

# The steps of docs/DEPLOY.md, run on 127.0.0.11-.15 as five stand-in machines.
deploy-check: build
	@scripts/deps.sh test
	@scripts/deploy-check.sh

# The web console in headless Chromium (Debian's) against a real three-node cluster; screenshots
# under $(CARGO_TARGET_DIR)/console-screenshots/.
test-console:
	@scripts/deps.sh test
	cargo build $(CARGO_PROFILE) --bin raftflow
	PYTHONDONTWRITEBYTECODE=1 "$$(scripts/browser-env.sh)/bin/python" -m pytest -q -p no:cacheprovider cluster-tests/ui

# The long failure suite: every fault for JEPSEN_SECONDS (default 600), JEPSEN_RUNS seeds each
# (default 1), report under jepsen-report/<time>/<fault>[-<run>]/ (history.jsonl,
# nemesis.jsonl, verdict.json, plot.png, node logs).
jepsen: deps
	@scripts/deps.sh test
	cargo build $(CARGO_PROFILE) --workspace --bins
	$(CARGO_TARGET_DIR)/release/raftflow-jepsen --fault $${FAULT:-all} --seconds $${JEPSEN_SECONDS:-600} \
	  --runs $${JEPSEN_RUNS:-1} --out jepsen-report/$$(date +%Y%m%d-%H%M%S) $${SEED:+--seed $$SEED}

lint:
	cargo fmt --all -- --check
	cargo clippy $(CARGO_PROFILE) --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

# raftflow and etcd side by side: fresh three-node clusters of each on loopback, every workload
# (create, transitions, read-mix, tasks, task-loop, the realistic events, and ping: an HTTP round
# trip with no work behind it, the machine's floor) at 1, 16, 64 and 256 clients. Writes table.md,
# bench.json and chart.png under bench-report/<time>/. DURATION_S per cell (default 5); also the
# CPU of 64 idle groups, with RESTART_WORKFLOWS=N a kill -9 restart of a node holding N, and
# with JOIN_WORKFLOWS=N a fourth node joining three holding N under a transition load, with
# GROUP_WORKFLOWS=N a ninth data group added to eight holding N under a transition load.
bench: deps
	@scripts/deps.sh bench
	cargo build $(CARGO_PROFILE) --workspace --bins
	$(CARGO_TARGET_DIR)/release/raftflow-bench --duration-s $${DURATION_S:-5} \
	  $${CONCURRENCY:+--concurrency $$CONCURRENCY} $${WORKLOADS:+--workloads $$WORKLOADS} \
	  $${RESTART_WORKFLOWS:+--restart-workflows $$RESTART_WORKFLOWS} \
	  $${JOIN_WORKFLOWS:+--join-workflows $$JOIN_WORKFLOWS} \
	  $${GROUP_WORKFLOWS:+--group-workflows $$GROUP_WORKFLOWS} \
	  --out bench-report/$$(date +%Y%m%d-%H%M%S)

# Instructions per transition, counted by callgrind (host timing drifts; counts do not): three
# nodes under valgrind, N transitions (default 3000) from CLIENTS clients (default 64). Prints
# them by node and by library; callgrind files under profile-report/<time>/.
profile: build
	@scripts/deps.sh profile
	scripts/profile.sh profile-report/$$(date +%Y%m%d-%H%M%S) $${N:-3000} $${CLIENTS:-64} $${WORKLOAD:-transitions} $${WORKFLOWS:-1000}
