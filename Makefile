# edgetrust — the two commands are `make demo` and `make test`; everything else is a step of theirs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# PostgreSQL runs on our machines and in CI; point the tests at it when it answers so its tests run instead of
# skipping. An explicit DATABASE_URL always wins.
PG_UP := $(shell timeout 2 bash -c '</dev/tcp/127.0.0.1/5432' 2>/dev/null && echo yes)
ifeq ($(PG_UP),yes)
export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
endif

.PHONY: help setup build lint typecheck test unit demo bench soak clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: ## install Debian + npm packages, start dockerd and the local registry (idempotent)
	@scripts/setup.sh all

build: setup ## compile TypeScript to dist/, then one bundle per daemon (dist/daemons/)
	@npx tsc -p tsconfig.build.json && node scripts/bundle.mjs

lint: setup ## eslint
	@npx eslint .

typecheck: setup ## tsc --noEmit over code and tests
	@npx tsc -p tsconfig.json --noEmit

test: setup lint typecheck build ## set up, then lint, typecheck and every test
	@mkdir -p .tmp; rc=0; npx vitest run --reporter=default --reporter=json --outputFile.json=.tmp/vitest.json || rc=$$?; \
	  if [ -f .tmp/vitest.json ]; then node scripts/test-summary.mjs .tmp/vitest.json; fi; exit $$rc

demo: build ## set up, then run the attested boot flow on embedded defaults
	@node bin/edgetrust.js demo

bench: build ## run every benchmark and print ratios against references measured in the same run (ONLY=hub,agent)
	@node --import tsx bench/run.ts $(if $(ONLY),--only $(ONLY))

soak: setup ## renewal soak: every certificate of a device renewed 100 times under QoS 1 traffic (SOAK_ARGS="--rounds N --json")
	@node --import tsx test/soak/main.ts $(SOAK_ARGS)

clean: ## remove build output and demo state
	rm -rf dist .edgetrust-demo
