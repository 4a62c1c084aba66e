# floe — build and test entry points. Every stage prints its wall time
# (`== stage NAME: 12.3 s`, see scripts/stage.sh).
#
#   make deps        install what a fresh Debian 12 machine lacks (idempotent)
#   make build       build every crate and target
#   make lint        rustfmt check, clippy -D warnings
#   make test        deps, lint, workspace tests, model, test-bugs, csi-sanity (all, split), e2e, check-leftovers
#   make test-full   the same with every model matrix in full (100,000 schedules
#                    per mode from today's seed base and a second derived one),
#                    100 link cuts and 99 epochs over a bad link between the sites,
#                    1,008 power cuts (every failpoint x mode x side, 28 times)
#   make test-bugs   the model tests must catch each injected engine bug, the
#                    power-cut matrix each injected driver bug
#   make bench       write docs/benchmarks.md
#   make demo        two sites, a replicated group, freezes, a failover, a report (root)
#   make e2e         real Kubernetes clusters with floe (root), the e2e stage of make test alone: e2e/run-tests.sh
#   make e2e-build   build the e2e components into /var/cache/floe-e2e (once per version)
#   make cluster     one cluster with floe, for a person to explore; make cluster-down removes it
#   make clean       cargo clean

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
MAKEFLAGS += --no-print-directory
.DEFAULT_GOAL := build

CARGO ?= cargo
STAGE := scripts/stage.sh

# Seed base of the model tests: rotates daily (days since the epoch) so each
# day explores new schedules; printed so a failure can be replayed, and taken
# from the environment when set there.
ifeq ($(strip $(FLOE_MODEL_SEED_BASE)),)
FLOE_MODEL_SEED_BASE := $(shell echo $$(( $$(date -u +%s) / 86400 )))
endif
# test-full also runs from a second base derived from the first (a
# multiplicative hash, far from any base `make test` uses), so the full run
# and CI's sample explore different schedules on the same day.
FLOE_MODEL_SEED_BASE_2 := $(shell echo $$(( ($(FLOE_MODEL_SEED_BASE) * 2654435761) % 4294967291 )))

.PHONY: deps build lint test test-full test-bugs check-leftovers bench demo clean e2e e2e-build cluster cluster-down

deps:
	@$(STAGE) deps scripts/deps.sh

build: deps
	@$(STAGE) build $(CARGO) build --workspace --all-targets --locked

lint: deps
	@$(STAGE) fmt $(CARGO) fmt --all --check
	@$(STAGE) clippy $(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@$(STAGE) engine-purity scripts/check-engine-purity.sh

# $(1): extra environment for the workspace tests; $(2): model seed bases.
define run-tests
	@echo "model seed bases: $(2)"
	@FLOE_MODEL_SEED_BASE=$(FLOE_MODEL_SEED_BASE) $(1) $(STAGE) cargo-test $(CARGO) test --workspace --locked -- --skip model_
	@for base in $(2); do \
		FLOE_MODEL_SEED_BASE=$$base $(1) $(STAGE) model-$$base $(CARGO) test -p floe-engine --locked --test model -- --nocapture; \
	done
	@FLOE_MODEL_SEED_BASE=$(FLOE_MODEL_SEED_BASE) $(STAGE) test-bugs scripts/test-bugs.sh
	@$(STAGE) csi-sanity scripts/csi-sanity.sh
	@$(STAGE) csi-sanity-split scripts/csi-sanity-split.sh
	@$(STAGE) e2e e2e/run-tests.sh
	@$(STAGE) check-leftovers scripts/check-leftovers.sh
endef

# Schedules per mode come from the model test itself (10,000).
test: deps lint
	$(call run-tests,,$(FLOE_MODEL_SEED_BASE))

test-full: deps lint
	$(call run-tests,FLOE_MODEL_SCHEDULES=100000 FLOE_LINK_CUTS=100 FLOE_BAD_LINK_EPOCHS=99 FLOE_POWER_CUTS=1008,$(FLOE_MODEL_SEED_BASE) $(FLOE_MODEL_SEED_BASE_2))

test-bugs: deps
	@FLOE_MODEL_SEED_BASE=$(FLOE_MODEL_SEED_BASE) $(STAGE) test-bugs scripts/test-bugs.sh

check-leftovers:
	@$(STAGE) check-leftovers scripts/check-leftovers.sh

bench: deps
	@$(STAGE) bench scripts/bench.sh

# E2E_TEST=NAME runs the e2e tests whose name contains NAME.
e2e: deps
	@$(STAGE) e2e e2e/run-tests.sh $(E2E_TEST)

e2e-build:
	@$(STAGE) e2e-build e2e/build.sh all

CLUSTER ?= dev

cluster: deps
	@$(STAGE) e2e-build e2e/build.sh all >/dev/null
	@$(STAGE) floe-build $(CARGO) build --locked -p floe-driver --bins
	@$(STAGE) cluster-up e2e/cluster.sh up $(CLUSTER) 7
	@$(STAGE) cluster-floe e2e/cluster.sh floe $(CLUSTER)
	@echo "kubectl: /var/lib/floe-e2e/$(CLUSTER)/kubectl get pods -A   (make cluster-down removes it)"

cluster-down:
	@$(STAGE) cluster-down e2e/cluster.sh down $(CLUSTER)

# Two sites in network namespaces, a replicated group under a workload,
# freezes, the primary lost, the DR promoted and checked (as root).
demo: deps
	@$(CARGO) test --locked -p floe-driver --test demo

clean:
	@$(STAGE) clean $(CARGO) clean
