# One entry point for humans and CI alike. `make demo` and `make test` set everything up first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.opengrid-installed

.PHONY: setup demo test test-fast check bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: setup  ## a local network on 127.0.0.1 with the real default model, verified jobs, points
	$(VENV)/bin/opengrid demo --keep .opengrid-demo --stay

test: setup  ## the whole suite (unit, node, multi-process e2e) plus lint and types
	bash scripts/test.sh

test-fast: setup  ## everything but the multi-process tests
	bash scripts/test.sh -m "not slow"

check: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
