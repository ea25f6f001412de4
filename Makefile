# One entry point for humans and CI alike. `make demo` and `make test` set everything up first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.opengrid-installed
LOCKS := requirements/pip.lock requirements/dev.lock requirements/model.lock
# One lock for every platform and Python >= 3.11, with the hash of every file (requirements/README.md).
UV_COMPILE := $(VENV)/bin/uv pip compile --universal --python-version 3.11 --generate-hashes \
	--index-url https://pypi.org/simple --custom-compile-command "make lock" --quiet

.PHONY: setup demo test test-fast coverage check bench clean lock lock-upgrade

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh $(LOCKS)
	bash scripts/setup.sh

demo: setup  ## a local network on 127.0.0.1 with the real default model, verified jobs, points
	$(VENV)/bin/opengrid demo --keep .opengrid-demo --stay

test: setup  ## the whole suite (unit, node, multi-process e2e) plus lint and types
	bash scripts/test.sh

test-fast: setup  ## everything but the multi-process tests
	bash scripts/test.sh -m "not slow"

# The suite under coverage ([tool.coverage] in pyproject.toml), subprocesses included: each process writes
# a .coverage.* file, combined at the end; prints the files below 100 % and the total. Pytest's arguments
# in ARGS (`make coverage ARGS='-m "not slow"'`); a failing test still gets its report, and the status.
coverage: setup  ## line coverage of opengrid, the SDK and the ledger by the suite, and its total
	rm -f .coverage .coverage.*
	$(VENV)/bin/coverage run -m pytest -q $(ARGS); status=$$?; \
	$(VENV)/bin/coverage combine -q && $(VENV)/bin/coverage report && \
	echo "total line coverage: $$($(VENV)/bin/coverage report --format=total) %"; exit $$status

check: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

lock: setup  ## re-resolve requirements/*.lock after a pyproject.toml change, keeping unchanged pins
	$(UV_COMPILE) $(UPGRADE) requirements/pip.in -o requirements/pip.lock
	$(UV_COMPILE) $(UPGRADE) pyproject.toml --extra dev -o requirements/dev.lock
	$(UV_COMPILE) $(UPGRADE) --no-deps requirements/model.in -o requirements/model.lock

lock-upgrade:  ## move every pin in requirements/*.lock to the newest release pyproject.toml allows
	$(MAKE) lock UPGRADE=--upgrade

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage .coverage.*
