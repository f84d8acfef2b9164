# One-command setup, tests, demo and benchmarks. `make test` and `make demo` create the venv first.
# Commands run through the venv's console scripts or with -I, never `python -m`/`-c` from here: those put this
# folder on sys.path, where kernels/ would shadow the `kernels` package that transformers imports.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.iqa-plugins-installed
# torch/torchvision are pinned here (not in pyproject) so the project still installs next to other torches.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
BENCH_MODE ?= full
COMPILE_CHECK_OUT ?= build/compile_check

.PHONY: setup build browser test test-fast compile-check demo bench bench-quick clean gpu-check gpu-bundle

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard kernels/attribute_scorer/csrc/*)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools<82" wheel ninja
	$(PY) -m pip install --quiet $(TORCH_PINS)
	# --no-build-isolation: compile the C++ scorer against the pinned torch already in the venv.
	# The ray extra (Ray Data, ~35 s to install) lets the suite test `score --engine ray`; its tests skip without it.
	$(PY) -m pip install --quiet --no-build-isolation -e ".[dev,ray]" $(TORCH_PINS)
	$(PY) -I -c "import iqa_plugins.kernels as k; print('attribute scorer backend:', k.attribute_scores_backend())"
	touch $@

# Rebuild the C++ extension in place after editing kernels/attribute_scorer/csrc.
build: setup
	$(PY) setup.py --quiet build_ext --inplace

# Debian's chromium and chromedriver for the report page's browser test (no browser download: the system
# packages). Installed when missing and possible (root or password-less sudo with apt-get); otherwise that one
# test skips and says why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif ! command -v apt-get >/dev/null; then echo "browser test will be skipped: no apt-get to install chromium"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium chromium-driver; \
	elif sudo -n true 2>/dev/null; then sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	else echo "browser test will be skipped: installing chromium needs root (sudo apt-get install chromium chromium-driver)"; fi

# IQA_PLUGINS_REQUIRE_EXT: a missing compiled scorer fails the tests instead of skipping them.
test: setup browser
	IQA_PLUGINS_REQUIRE_EXT=1 $(VENV)/bin/pytest

test-fast: setup
	IQA_PLUGINS_REQUIRE_EXT=1 $(VENV)/bin/pytest -m "not slow"

# The Triton kernels compiled for sm_80 and sm_90 without a GPU: shared memory, registers, spills, 64-bit
# addressing of every config the autotuner can pick (table printed; JSON per target in COMPILE_CHECK_OUT).
compile-check: setup
	$(PY) -I -m iqa_plugins.kernels.diff_attention.compile_check --json-dir $(COMPILE_CHECK_OUT)

# The demo keeps to 15 minutes counted from here, setup included (its training budget shrinks if need be).
DEMO_START := $(shell date +%s)
demo: setup
	$(VENV)/bin/iqa-plugins demo --out demo_out --finish-within 900 --started-at $(DEMO_START)

bench: setup
	$(PY) benchmarks/run.py --mode $(BENCH_MODE)

bench-quick: setup
	$(PY) benchmarks/run.py --mode quick

# A lent GPU machine has torch/triton/timm but no network: gpu-bundle (run where pip works) collects the pure-Python
# wheels it lacks, at this venv's versions, into one folder to carry; gpu-check installs them offline, builds the
# project with the CUDA scorer, runs every GPU test and the target benchmarks (a dry run without a GPU).
GPU_BUNDLE      ?= gpu_bundle
GPU_BUNDLE_DISTS := pyiqa open_clip_torch ftfy wcwidth
GPU_BUNDLE_MAX_MB := 50
GPU_PYTHON      ?= $(if $(wildcard $(PY)),$(PY),python3)

gpu-bundle: setup
	rm -rf $(GPU_BUNDLE)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
		--abi none --platform any -d $(GPU_BUNDLE) \
		$$($(PY) -I -c "import importlib.metadata as m, sys; print(*(f'{d}=={m.version(d)}' for d in sys.argv[1:]))" $(GPU_BUNDLE_DISTS))
	@size=$$(du -sm $(GPU_BUNDLE) | cut -f1); ls -1 $(GPU_BUNDLE); echo "$(GPU_BUNDLE): $${size} MiB"; \
		test $$size -lt $(GPU_BUNDLE_MAX_MB) || { echo "bundle over $(GPU_BUNDLE_MAX_MB) MiB"; exit 1; }

gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --bundle $(GPU_BUNDLE)

clean:
	rm -rf $(VENV) build *.egg-info demo_out kernels/attribute_scorer/_C*.so
