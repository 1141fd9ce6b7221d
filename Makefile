# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/cascade demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/bench_synthetic.py --items 1000000 --interactions 10000000 --users 200000
	$(BIN)/python bench/bench_data_pipeline.py --items 1000000 --interactions 10000000 --users 200000
	$(BIN)/python bench/bench_search.py --items 1000000
	$(BIN)/python bench/bench_jobs.py --items 1000000

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
