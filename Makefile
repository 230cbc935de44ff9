# `make test` and `make run` create .venv on first use and install the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision: pip takes the versions this machine holds; elsewhere pip picks a build for your platform.
STAMP := $(VENV)/.installed

.PHONY: install test lint run report ui bench gpu-check gpu-bundle docs docs-serve clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs

lint: $(STAMP)
	$(BIN)/ruff check .

run: $(STAMP)
	$(BIN)/ablate run studies/batchnorm.yaml --profile quick --until-decided

report: $(STAMP)
	$(BIN)/ablate report batchnorm

ui: $(STAMP)
	$(BIN)/ablate ui

# PRECISION: train.precision of the engine's rows, comma-separated (make bench PRECISION=fp32,bf16: both, alternating)
PRECISION ?= auto
bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py --precision $(PRECISION)

# The CUDA path end to end on a GPU machine (tests incl. `cuda`, benchmarks, batchnorm studies); on a CPU as far as it can.
gpu-check: $(STAMP)
	PY=$(BIN)/python ABLATE=$(BIN)/ablate benchmarks/gpu_check.sh

# What a lent, offline GPU machine needs (wheels for its Python, the archive) in .gpu/: see benchmarks/gpu_device.sh.
gpu-bundle: $(STAMP)
	PIP=$(BIN)/pip benchmarks/gpu_bundle.sh

# The documentation site (docs/, mkdocs.yml): built into site/ with every warning an error, or served on loopback.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
