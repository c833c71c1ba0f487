# divreg: the two set-up commands. Both create .venv when missing, install torch first
# (a CPU build by default; override e.g. `make test TORCH="torch==2.13.0 --index-url ..."`),
# then the project with its extras. A stamp file makes re-runs quick.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= all
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.divreg-installed

.PHONY: demo test test-fast install clean

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

test: $(STAMP)
	$(BIN)/python -m pytest

# the fast tier: everything but the tests marked slow (whole jobs, launched processes); make test runs all
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) outputs .pytest_cache
