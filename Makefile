# maml_ros: `make demo` runs the main job, `make test` runs the tests.
SHELL := /bin/bash
PY_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-installed
PKG_STAMP := $(VENV)/.pkg-installed
TOOLS_STAMP := $(VENV)/.tools-installed
RAY_STAMP := $(VENV)/.ray-installed
# The Ray backend (requirements-ray.txt); WITH_RAY=0: not installed, and its tests skip.
WITH_RAY ?= 1
PIP := $(PY) -m pip install -q --disable-pip-version-check
# The launch stack and `ros2` CLI as wheels (no registry carries them): the project's shared
# folder has them; a ROS 2 install (/opt/ros/<distro>) has them already. Empty: not installed,
# and the launch tests skip with a reason.
LAUNCH_WHEELS ?= $(wildcard ../shared/ros2-launch/wheels)
LARK := $(shell sed -n 's/^lark==//p' requirements-tools.txt)
SOURCES := $(shell find maml_ros launch config models resource -type f -not -name '*.pyc' 2>/dev/null) setup.py setup.cfg package.xml
ENV := source tools/env.sh &&

BENCHES := $(addprefix bench-,sine sim adapt control e2e train load reach screen delivery ray fuzz soak)

.PHONY: setup shell test lint params demo train baselines eval clean $(BENCHES)

setup: $(PKG_STAMP) $(if $(LAUNCH_WHEELS),$(TOOLS_STAMP)) $(if $(filter 1,$(WITH_RAY)),$(RAY_STAMP))

$(STAMP): requirements.txt
	test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PIP) -r requirements.txt
	touch $@

# Their PyPI dependencies and colcon first, then the wheels (--no-deps: their metadata names
# ament_index_python etc., which PyPI spells ros-ament-index-python), then lark once more.
$(TOOLS_STAMP): $(STAMP) requirements-tools.txt $(wildcard $(LAUNCH_WHEELS)/*.whl)
	test -n "$(wildcard $(LAUNCH_WHEELS)/launch_ros-*.whl)" || \
	  { echo "LAUNCH_WHEELS=$(LAUNCH_WHEELS) holds no launch_ros wheel" >&2; exit 2; }
	$(PIP) -r requirements-tools.txt
	$(PIP) --no-deps --no-index $(LAUNCH_WHEELS)/*.whl
	$(PIP) --no-deps --force-reinstall lark==$(LARK)
	touch $@

$(RAY_STAMP): $(STAMP) requirements-ray.txt
	$(PIP) -r requirements-ray.txt
	touch $@

# The package is installed for real (not editable) so that share/maml_ros and
# lib/maml_ros look exactly as a colcon install does.
$(PKG_STAMP): $(STAMP) $(SOURCES)
	$(PIP) --no-deps --no-build-isolation --force-reinstall .
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

# config/adapt.yaml and the README's parameter table, from the nodes' PARAMS tables.
params: setup
	$(ENV) python -m maml_ros.ros.params_doc --write

# ROBOT= a maml_ros.runtime.robots name (default kuka_iiwa); its shipped models/<robot>_maml.safetensors unless a checkpoint is given.
ROBOT ?= kuka_iiwa
ROBOT_ARG := $(if $(filter-out kuka_iiwa,$(ROBOT)),--robot $(ROBOT))

demo: setup
	$(ENV) tools/isolated.sh maml-ros-demo --out out/demo $(ROBOT_ARG) $(DEMO_ARGS)

train: setup
	$(ENV) maml-ros-train --config config/train.yaml --out runs/train $(ROBOT_ARG) $(TRAIN_ARGS)

# The same-budget baselines of the robot's shipped MAML model (its episodes exactly, its
# minutes + 10% at most): multi-task PPO (fine-tuning start, robust policy) and first-order
# MAML, 10-32 min each on 2 cores (by the machine); their last checkpoints (all of the
# budget) ship as models/<robot>_<baseline>.*
baselines: setup
	set -e; for baseline in multitask fomaml; do \
	  out=runs/baselines_$(ROBOT)/$$baseline; \
	  $(ENV) maml-ros-train --config config/train.yaml --baseline $$baseline --out $$out \
	    $$(test -f $$out/state.safetensors && echo --resume) \
	    $(ROBOT_ARG) $(TRAIN_ARGS); \
	  name=$$($(ENV) python -c 'import sys; from maml_ros.runtime.robots import shipped_model_name as n; print(n(*sys.argv[1:]).removesuffix(".safetensors"))' $(ROBOT) $$baseline); \
	  cp $$out/policy_latest.safetensors models/$$name.safetensors; \
	  cp $$out/policy_latest.json models/$$name.json; \
	done

# The oracle returns it trains are kept in models/ (the repo's copy, committed) and reused.
eval: setup
	$(ENV) maml-ros-eval --out out/eval $(ROBOT_ARG) --oracle-cache models/oracle_returns_$(ROBOT).json $(EVAL_ARGS)

$(BENCHES): bench-%: setup
	$(ENV) tools/isolated.sh python bench/bench_$*.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info out
