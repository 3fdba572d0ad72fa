# The two set-up commands of the README. Each builds its own virtual environment from scratch if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned in pyproject.toml: this takes the CPU build, never the CUDA wheels.
	$(BIN)/python -m pip install --quiet -e '.[test,zoo]'
	touch $@

demo: $(VENV)/.installed  ## install, then run the main job on the embedded dataset
	$(BIN)/headstart demo

test: $(VENV)/.installed  ## install, then run the fast test suite
	$(BIN)/python -m pytest -q

test-slow: $(VENV)/.installed  ## real datasets and long runs (../shared/datasets)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) headstart-demo .pytest_cache
