# The stack's interface: make up | down | status | logs | test | bench (and clean).
SHELL := /bin/bash
.DEFAULT_GOAL := help
export CARGO_TERM_COLOR ?= auto
# The same cache scripts/lib.sh uses: one build serves `make up` and `make test`.
PAYSTREAM_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/paystream
export PAYSTREAM_CACHE
export CARGO_TARGET_DIR ?= $(PAYSTREAM_CACHE)/target
# The Python tools the tests run come from the venv scripts/install.sh makes (PEP 668).
export PATH := $(PAYSTREAM_CACHE)/venv/bin:$(PATH)

.PHONY: help up down status logs clean demo deps test lint bench chaos

help:
	@echo "make up      start the whole local stack and run the demo (writes .stack/env)"
	@echo "             STRIPE=real: against a Stripe test account (README: Running against Stripe test mode)"
	@echo "make down    stop what make up started (data kept)"
	@echo "make status  one line per component"
	@echo "make logs    follow every log in .stack/logs (make logs NAME=connect for one)"
	@echo "make clean   stop and delete all local data"
	@echo "make test    lint, then every test against the real stack"
	@echo "make bench   every stage against its floor on the local stack (BENCHMARKS.md)"
	@echo "make chaos   the adversarial suite on a stack of its own (SEED=... replays one)"

# STRIPE=sim (stripe-sim, the default) or STRIPE=real (a Stripe account in test mode:
# STRIPE_SECRET_KEY=sk_test_... and STRIPE_WEBHOOK_SECRET=whsec_... in the environment).
up:
	@STRIPE=$(STRIPE) scripts/stack.sh up

down:
	@scripts/stack.sh down

status:
	@scripts/stack.sh status

logs:
	@scripts/stack.sh logs $(NAME)

clean:
	@scripts/stack.sh clean

demo:
	@scripts/stack.sh demo

# What building needs (libssl-dev for librdkafka's TLS, ...), installed only if missing.
deps:
	@scripts/install.sh

lint: deps
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings

# The stack comes up first (idempotent); tests also bring up what they need themselves,
# so `cargo test` alone works too. Tests drive stripe-sim (/_sim): always STRIPE=sim.
test: lint
	@STRIPE=sim scripts/stack.sh up --no-demo
	STRIPE=sim cargo test --workspace --no-fail-fast

# The services as release builds, then each benchmark (scripts/bench.sh). The stack's
# table is also written to .stack/bench/latest.md. BENCH_ARGS=--quick for a smoke run.
bench:
	@STRIPE=sim scripts/bench.sh $(BENCH_ARGS)

# The money-safety invariants under attack (docs/invariants.md) on a stack of its own
# (.stack/chaos, other ports): a fresh seed each run, printed first; `make chaos SEED=...`
# replays that plan. CHAOS_ARGS adds options, e.g. CHAOS_ARGS="--payments 5000".
chaos:
	STRIPE=sim cargo run --quiet -p paystream-chaos -- $(if $(SEED),--seed $(SEED)) $(CHAOS_ARGS)
