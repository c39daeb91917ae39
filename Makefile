# The two commands of the README. Both set everything up in a virtual environment (.venv) first.
#   make demo   trains a world model on cartpole-swingup and controls it with CEM (~15 min on 2 CPU cores)
#   make test   runs the fast test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-slow bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

demo: setup
	MUJOCO_GL=egl $(BIN)/latentplan demo

test: setup
	MUJOCO_GL=egl $(BIN)/python -m pytest

test-slow: setup
	MUJOCO_GL=egl $(BIN)/python -m pytest -m slow

bench: setup
	$(BIN)/python benchmarks/plan_speed.py

clean:
	rm -rf $(VENV) runs build *.egg-info
