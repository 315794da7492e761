# maml_ros: `make demo` runs the main job, `make test` runs the tests.
SHELL := /bin/bash
PY_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-installed
PKG_STAMP := $(VENV)/.pkg-installed
SOURCES := $(shell find maml_ros launch config models resource -type f -not -name '*.pyc' 2>/dev/null) setup.py setup.cfg package.xml
ENV := source tools/env.sh &&

BENCHES := $(addprefix bench-,sine sim adapt control e2e train load reach)

.PHONY: setup shell test lint demo train eval clean $(BENCHES)

setup: $(PKG_STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

# The package is installed for real (not editable) so that share/maml_ros and
# lib/maml_ros look exactly as a colcon install does.
$(PKG_STAMP): $(STAMP) $(SOURCES)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall .
	tools/link_executables.sh $(VENV)
	touch $@

shell: setup
	@echo "Entering the maml_ros environment (exit to leave)."
	@bash --rcfile <(echo 'source ~/.bashrc 2>/dev/null; source tools/env.sh; PS1="(maml_ros) $$PS1"')

test: setup
	$(ENV) tools/run_tests.sh

lint: setup
	$(VENV)/bin/ruff check maml_ros test bench launch setup.py
	$(VENV)/bin/ruff format --check maml_ros test bench launch setup.py

demo: setup
	$(ENV) tools/isolated.sh maml-ros-demo --out out/demo

train: setup
	$(ENV) maml-ros-train --config config/train.yaml --out runs/train

eval: setup
	$(ENV) maml-ros-eval --out out/eval

$(BENCHES): bench-%: setup
	$(ENV) tools/isolated.sh python bench/bench_$*.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info out
