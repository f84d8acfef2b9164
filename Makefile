# One-command setup, tests, demo and benchmarks. `make test` and `make demo` create the venv first.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.iqa-plugins-installed
# torch/torchvision are pinned here (not in pyproject) so the project still installs next to other torches.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
BENCH_MODE ?= full

.PHONY: setup build test test-fast demo bench bench-quick clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard kernels/attribute_scorer/csrc/*)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools<82" wheel ninja
	$(PY) -m pip install --quiet $(TORCH_PINS)
	# --no-build-isolation: compile the C++ scorer against the pinned torch already in the venv.
	# The ray extra (Ray Data, ~35 s to install) lets the suite test `score --engine ray`; its tests skip without it.
	$(PY) -m pip install --quiet --no-build-isolation -e ".[dev,ray]" $(TORCH_PINS)
	$(PY) -c "import iqa_plugins.kernels as k; print('attribute scorer backend:', k.attribute_scores_backend())"
	touch $@

# Rebuild the C++ extension in place after editing kernels/attribute_scorer/csrc.
build: setup
	$(PY) setup.py --quiet build_ext --inplace

# IQA_PLUGINS_REQUIRE_EXT: a missing compiled scorer fails the tests instead of skipping them.
test: setup
	IQA_PLUGINS_REQUIRE_EXT=1 $(PY) -m pytest

test-fast: setup
	IQA_PLUGINS_REQUIRE_EXT=1 $(PY) -m pytest -m "not slow"

demo: setup
	$(PY) -m iqa_plugins demo --out demo_out

bench: setup
	$(PY) benchmarks/run.py --mode $(BENCH_MODE)

bench-quick: setup
	$(PY) benchmarks/run.py --mode quick

clean:
	rm -rf $(VENV) build *.egg-info demo_out kernels/attribute_scorer/_C*.so
