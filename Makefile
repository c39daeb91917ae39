# The two commands of the README. Both set everything up in a virtual environment (.venv) first.
#   make demo   trains a world model on cartpole-swingup and controls it with CEM (4-8 min on 2 CPU cores; it stops by 15)
#   make test   runs the fast test suite
#
# The set-up chooses the PyTorch build for this machine (scripts/install_torch.sh):
#   TORCH=auto  (default) the CPU build where no NVIDIA driver is present, PyPI's default build where one is
#   TORCH=cpu   always the CPU build           TORCH=cuda  always PyPI's default (CUDA on Linux) build
#   TORCH=skip  keep whatever torch the venv already has (or let pip resolve it with the package)
# e.g. `make demo TORCH=cuda`, or `make setup TORCH=cpu TORCH_CPU_INDEX=<your mirror of PyTorch's CPU index>`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= auto
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DEMO_ARGS ?=

.PHONY: setup demo test test-slow bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install_torch.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	TORCH=$(TORCH) TORCH_VERSION=$(TORCH_VERSION) TORCH_CPU_INDEX=$(TORCH_CPU_INDEX) \
		sh scripts/install_torch.sh $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	MUJOCO_GL=egl $(BIN)/latentplan demo $(DEMO_ARGS)

test: setup
	MUJOCO_GL=egl $(BIN)/python -m pytest

test-slow: setup
	MUJOCO_GL=egl $(BIN)/python -m pytest -m slow

bench: setup
	$(BIN)/python benchmarks/plan_speed.py

clean:
	rm -rf $(VENV) build *.egg-info
