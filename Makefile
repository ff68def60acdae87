# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv from the package registry on first use; nothing else needs installing by hand.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# What ruff lints and formats.
SOURCES := mmcls pretrain deploy tests benchmarks

.PHONY: demo test test-fast lint typecheck format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mmcls demo --out demo_runs

# Lint, type check, then the fast suite + the slow end-to-end tests (`-m ""` lifts the default "not slow"
# filter), with the 20 slowest tests listed. pytest exits 5 when nothing was collected: that is a failure
# here, never a silent pass. Two pytest-xdist workers, each taking whole test modules (`loadscope`: a
# module's trained model or server is built once): many tests drive one single-threaded child process or
# wait on a server or a timeout, so a second worker uses the other core.
test: lint typecheck
	$(BIN)/python -m pytest -m "" -q --durations=20 -n 2 --dist loadscope

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

# The library as it is installed: deploy/ and pretrain/ are the packages mmcls.deploy and mmcls.pretrain
# (pyproject's package-dir), which mypy cannot map. So it reads a tree of links with that layout, and an
# import of mmcls.deploy.* is checked against the real module instead of being typed Any.
TYPECHECK_TREE := build/typecheck
typecheck: $(STAMP)
	rm -rf $(TYPECHECK_TREE)/mmcls && mkdir -p $(TYPECHECK_TREE)/mmcls
	ln -s $(CURDIR)/mmcls/*.py $(CURDIR)/mmcls/*/ $(TYPECHECK_TREE)/mmcls/
	ln -s $(CURDIR)/deploy $(CURDIR)/pretrain $(TYPECHECK_TREE)/mmcls/
	cd $(TYPECHECK_TREE) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml mmcls

format: $(STAMP)
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

clean:
	rm -rf $(VENV) demo_runs .pytest_cache .mypy_cache $(TYPECHECK_TREE)
