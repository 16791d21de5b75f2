# Wharf — the two commands: `make run` (demo gateway + mock provider) and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
MOCK_ADDR ?= 127.0.0.1:9999
CONF ?= conf/wharf.toml

.PHONY: run demo test deps services sdk build fmt-check lint unit conf-check bench bench-load soak clean

## Install what the build needs (pingora needs cmake) when it is missing.
deps:
	@command -v cmake >/dev/null 2>&1 || { \
	  echo "installing cmake"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  if command -v apt-get >/dev/null 2>&1; then $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq cmake; \
	  elif command -v dnf >/dev/null 2>&1; then $$SUDO dnf install -y cmake; \
	  elif command -v brew >/dev/null 2>&1; then brew install cmake; \
	  else echo "please install cmake" >&2; exit 1; fi; }
	@command -v cargo >/dev/null 2>&1 || { echo "please install Rust (https://rustup.rs)" >&2; exit 1; }
	@# The admin console's browser test drives headless Chromium through chromedriver.
	@{ command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1; }; } || { \
	  echo "installing chromium and chromium-driver"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  if command -v apt-get >/dev/null 2>&1; then $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; \
	  elif command -v dnf >/dev/null 2>&1; then $$SUDO dnf install -y chromium chromedriver; \
	  elif command -v brew >/dev/null 2>&1; then brew install --cask chromium chromedriver; \
	  else echo "please install Chromium and chromedriver (or set CHROME_BIN and CHROMEDRIVER)" >&2; exit 1; fi; }

## The gateway (package wharf) and the mock provider (package wharf-mock, crates/wharf-mock).
build: deps
	$(CARGO) build --release -p wharf -p wharf-mock --bin wharf --bin wharf-mock

## The demo: the bundled mock provider plus the gateway on the TOML-only default config.
run: build
	@set -e; \
	./target/release/wharf-mock --listen $(MOCK_ADDR) > /tmp/wharf-mock.log 2>&1 & mock=$$!; \
	trap 'kill $$mock 2>/dev/null' EXIT INT TERM; \
	for i in $$(seq 50); do grep -q listening /tmp/wharf-mock.log 2>/dev/null && break; sleep 0.1; done; \
	echo ""; \
	echo "Wharf demo: gateway on http://127.0.0.1:8080, admin on http://127.0.0.1:9090, mock provider on $(MOCK_ADDR)"; \
	echo "Demo virtual key: wharf-demo-key"; \
	echo "Try:"; \
	echo "  curl -s http://127.0.0.1:8080/v1/chat/completions -H 'Authorization: Bearer wharf-demo-key' \\"; \
	echo "       -H 'Content-Type: application/json' -d '{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}'"; \
	echo "  curl -sN http://127.0.0.1:8080/v1/chat/completions -H 'Authorization: Bearer wharf-demo-key' \\"; \
	echo "       -d '{\"model\":\"gpt-4o-mini\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}'"; \
	echo "Usage records: ./usage.jsonl   Metrics: curl -s http://127.0.0.1:9090/metrics"; \
	echo ""; \
	WHARF_MOCK_PROVIDER_KEY=sk-mock ./target/release/wharf serve -c $(CONF)

## The admin console in one step: throwaway Postgres and Redis on their own ports, the mock
## provider, the gateway in database mode (conf/database.example.toml), migrated, a super admin
## with a printed password, a seeded organisation and some traffic (scripts/demo.sh).
demo: build
	bash scripts/demo.sh

## Everything CI checks: formatting, lints, all tests, every shipped config.
## Postgres and Redis: the local ones when they answer, else throwaway instances (scripts/services.sh).
test: deps services fmt-check lint unit conf-check sdk

services:
	bash scripts/services.sh

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace --all-targets

## Soak: a mixed workload for SOAK_SECONDS (default 120) in release mode; prints throughput, p99,
## RSS over time and usage-record completeness. `make test` runs it briefly (12 s, debug build).
SOAK_SECONDS ?= 120
soak: deps services
	SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) test --release --test soak -- --nocapture

conf-check:
	$(CARGO) run --quiet --bin wharf -- check conf/*.toml benches/bench.toml benches/bench-gov.toml deploy/container.toml

## The official Python SDKs (openai, anthropic, google-genai) against Wharf, in a local venv.
sdk:
	bash tests/sdk/run.sh

## Criterion micro-benchmarks (SSE parser, body rewrite, translation) and the whole per-request
## path without sockets (hotpath).
bench: deps
	$(CARGO) bench --bench sse --bench rewrite --bench translate --bench routing --bench filters --bench safety --bench keycache --bench mcp --bench hotpath

## Load benchmark: direct-to-mock vs bare Pingora passthrough vs Wharf, in one run.
bench-load: deps
	bash benches/load.sh

clean:
	$(CARGO) clean
