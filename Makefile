# Two commands on a fresh machine with Python 3.11 and make: `make demo`, `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# torch is installed first, pinned to the release torchvision 0.29 is built against. PyPI has
# no CPU-only wheel of it, so the standard build comes with its CUDA libraries (about 5.6 GB,
# 54 s from the local mirror here); a machine with a CPU wheelhouse can pass CPU_TORCH=...
CPU_TORCH ?= torch==2.14.1
PYTEST_ARGS ?=
# With Java on the machine, the spark extra (pyspark 4.x) is installed and the Spark tests run.
HAS_JAVA := $(shell java -version >/dev/null 2>&1 && echo yes)
comma := ,

.PHONY: demo test test-all lint format bench-smoke clean install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(CPU_TORCH)"
	$(BIN)/pip install -q -e ".[test$(if $(HAS_JAVA),$(comma)spark)]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/hydranet demo

test: $(VENV)/.installed
	@$(if $(HAS_JAVA),,echo "make test: no Java on this machine: the Spark tests are SKIPPED (apt-get install openjdk-17-jre-headless, then make clean test)")
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every benchmark at tiny size (seconds each), results into temporary files; the bench
# extra (deepctr-torch, matplotlib, scikit-learn) is installed so that nothing is skipped.
# `make test` runs the same tests, skipping the peer and plot smokes without the extra.
bench-smoke: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test,bench]"
	$(BIN)/python -m pytest tests/test_benchmarks_smoke.py $(wildcard tests/test_benchmarks_*_smoke.py) $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
