# The two set-up commands of the README. Each builds its own virtual environment from scratch if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where pip finds torch. Empty: the configured index (here it holds the CPU build of torch 2.13.0). On a
# machine whose index serves PyPI's Linux wheels, which are CUDA builds of several GB, pass
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to get the CPU build.
TORCH_INDEX ?=

.PHONY: demo test test-slow bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, alone, so that TORCH_INDEX applies to it only; pyproject.toml pins the same version.
	$(BIN)/python -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e '.[test,zoo,tune,serve,ray,int8]'
	# --model onnx:PATH converts ONNX graphs with onnx2torch; --no-deps: it asks for torchvision, whose PyPI
	# wheels need a CUDA torch (pip would replace the CPU one). headstart needs no torchvision (models/onnx_import).
	$(BIN)/python -m pip install --quiet --no-deps 'onnx2torch==1.5.15'
	touch $@

demo: $(VENV)/.installed  ## install, then run the main job on the embedded dataset
	$(BIN)/headstart demo

# The report test renders report.html in a headless browser: Debian's chromium (as root, apt-get installs it).
CHROMIUM := $(shell command -v chromium 2>/dev/null)

test: $(VENV)/.installed  ## install, then run the fast test suite
	$(if $(CHROMIUM),,apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(BIN)/python -m pytest -q

test-slow: $(VENV)/.installed  ## real datasets and long runs (../shared/datasets)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) headstart-demo .pytest_cache
