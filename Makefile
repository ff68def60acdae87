# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv from the package registry on first use; nothing else needs installing by hand.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mmcls demo --out demo_runs

# Fast suite + the slow end-to-end tests (`-m ""` lifts the default "not slow" filter).
# pytest exits 5 when nothing was collected: that is a failure here, never a silent pass.
test: $(STAMP)
	$(BIN)/ruff check mmcls pretrain deploy tests benchmarks
	$(BIN)/python -m pytest -m "" -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff format mmcls pretrain deploy tests benchmarks
	$(BIN)/ruff check --fix mmcls pretrain deploy tests benchmarks

clean:
	rm -rf $(VENV) demo_runs .pytest_cache
