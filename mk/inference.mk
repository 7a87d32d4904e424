# The inference server (images/inference) and the tuning job (images/tuning): their own
# virtual environment, because vLLM's CPU build and torch (~2.5 GB) have nothing to do
# with the operator's dependencies. Included from the main Makefile; every variable is
# prefixed INF_ so that nothing clashes with it.
#
#   make setup-inference   .venv-inference with vLLM 0.32.0 (CPU build), torch 2.13.0 CPU
#   make test-inference    the contract suite on both engines + the tuning tests
#   make bench-inference   this server vs vLLM's own OpenAI server (markdown table)
#   make bench-multinode   the model split across two ranks vs one node (markdown table)

INF_PYTHON ?= python3.11
INF_VENV ?= .venv-inference
INF_BIN := $(INF_VENV)/bin
INF_STAMP := $(INF_VENV)/.installed
INF_DIR := images/inference
INF_TUNING_DIR := images/tuning
INF_REQUIREMENTS := $(INF_DIR)/requirements-cpu.txt
INF_CONSTRAINTS := $(INF_DIR)/constraints-cpu.txt
INF_BENCH_OUT ?= .kaito/bench-inference
INF_BENCH_ARGS ?=
# One thread per engine (2-core CI machines); 1 GiB of KV cache is plenty for the tiny model.
INF_ENV := OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 TOKENIZERS_PARALLELISM=false \
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: setup-inference test-inference bench-inference bench-multinode clean-inference

# The stamp makes a second `make setup-inference` instant; editing a requirements file
# re-runs pip, which only installs what changed.
$(INF_STAMP): $(INF_REQUIREMENTS) $(INF_CONSTRAINTS)
	@echo "[setup-inference] $(INF_VENV): vLLM 0.32.0 CPU build + torch 2.13.0 CPU (~2.5 GB, a few minutes the first time)"
	@test -x $(INF_BIN)/python || $(INF_PYTHON) -m venv $(INF_VENV)
	PIP_CONSTRAINT="$(abspath $(INF_CONSTRAINTS))" hack/heartbeat.sh setup-inference $(INF_BIN)/pip install -q -r $(INF_REQUIREMENTS)
	@# PyPI's torchvision/torchaudio/torchcodec are CUDA-linked and break transformers'
	@# imports on these machines; triton has no use on CPU. Text models need none of them.
	@$(INF_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton 2>&1 | grep -v "not installed" || true
	@$(INF_BIN)/python -c "import vllm, torch, transformers, peft; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	@touch $@

setup-inference: $(INF_STAMP)

# pytest exits 5 when it collects no test, so an empty run fails the target.
test-inference: $(INF_STAMP)
	cd $(INF_DIR) && $(INF_ENV) $(abspath $(INF_BIN))/python -m pytest
	cd $(INF_TUNING_DIR) && $(INF_ENV) $(abspath $(INF_BIN))/python -m pytest

bench-inference: $(INF_STAMP)
	cd $(INF_DIR) && $(INF_ENV) $(abspath $(INF_BIN))/python bench/compare.py \
		--out $(abspath $(INF_BENCH_OUT)) $(INF_BENCH_ARGS)

bench-multinode: $(INF_STAMP)
	cd $(INF_DIR) && $(INF_ENV) $(abspath $(INF_BIN))/python bench/multinode.py \
		--out $(abspath $(INF_BENCH_OUT)) $(INF_BENCH_ARGS)

clean-inference:
	rm -rf $(INF_VENV) $(INF_BENCH_OUT)
