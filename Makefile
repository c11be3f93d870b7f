# Two commands: `make demo` and `make test`. Each creates or refreshes .venv by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# Keep an installed torch (a CUDA build stays); with none, take the CPU build 2.13.0.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	# dev tools and the optional Ray backend (its tests run in `make test`); torch stays as is.
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]"
	# The optional nixl KV transport: numpy and torch are already here, so --no-deps keeps torch.
	$(BIN)/python -m pip install --quiet --no-deps "nixl-cu12>=1.5,<2"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m hyperflexis.demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
