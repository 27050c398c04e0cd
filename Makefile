# deltaprop — every target sets itself up on a fresh Debian machine with python3:
#   make run     train examples/fashion-mnist.toml into runs/fashion-mnist, then evaluate it
#   make test    the whole pytest suite (fault-injection tests included)
#   make bench   benchmarks against JAX, PyTorch CPU (eager, torch.compile), NumPy and scikit-learn;
#                grid search vs deltaprop tune (bench/tune.py)
#   make setup   only create/update .venv and make sure Fashion-MNIST is installed
#   make clean   remove .venv, caches and build artefacts (keeps runs/ and deltaprop-runs/)
# Thread counts are decided by deltaprop itself: nothing here sets OPENBLAS_NUM_THREADS.

SHELL := /bin/bash
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp
TEST_STAMP := $(VENV)/.stamp-test
BENCH_STAMP := $(VENV)/.stamp-bench
PLUGIN := examples/deltaprop-swish
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
FASHION_MNIST_FILES := train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte
PYTEST_ARGS ?=

# Compiled kernels are cached in ~/.cache/deltaprop/numba (deltaprop's default; set NUMBA_CACHE_DIR
# to move it), the same place for `make run`, `make test` and the CLI.

# apt-get install as root, or through sudo when there is one; fails if neither is possible.
APT_INSTALL = if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	else echo "cannot install $(1): not root and no sudo" >&2; false; fi && \
	command -v apt-get >/dev/null 2>&1 && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1)

.PHONY: run test bench setup clean data venv

setup: $(STAMP) data

run: setup
	rm -rf runs/fashion-mnist  # the main job starts fresh each time (train refuses to overwrite a run)
	$(VENV)/bin/deltaprop train examples/fashion-mnist.toml --run-dir runs/fashion-mnist
	$(VENV)/bin/deltaprop evaluate runs/fashion-mnist --data fashion-mnist:test

test: $(TEST_STAMP) data
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Some machines force OpenBLAS's kernel set (OPENBLAS_CORETYPE, with OPENBLAS_L2_SIZE) for older
# OpenBLAS builds; the benchmark runs without them, so NumPy's current OpenBLAS picks the kernels
# for the CPU (the bench prints which) for deltaprop, the NumPy peer and the GEMM peak alike.
# Tests and `make run` keep the environment as it is.
BENCH_ENV := env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE

bench: $(BENCH_STAMP) data
	$(BENCH_ENV) $(PY) bench/bench.py
	$(BENCH_ENV) $(PY) bench/startup.py
	$(PY) bench/tune.py   # grid vs tune (TPE + ASHA) on digits and a Fashion-MNIST subset; a few minutes

# The venv and the editable installs `make run` needs (no extras); redone when a pyproject.toml changes.
$(STAMP): pyproject.toml $(PLUGIN)/pyproject.toml
	@if ! $(PY) -m pip --version >/dev/null 2>&1; then \
		echo "creating $(VENV) with $(PYTHON)"; \
		$(PYTHON) -m venv --clear $(VENV) || { \
			echo "$(PYTHON) -m venv failed; installing python3-venv"; \
			$(call APT_INSTALL,python3-venv) && $(PYTHON) -m venv --clear $(VENV); \
		} || { echo "error: cannot create $(VENV); install python3-venv (Debian) and retry" >&2; exit 1; }; \
	fi
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q -e $(PLUGIN)
	@touch $@

# What the tests need besides: pytest, Hypothesis, every optional extra (Ray, scikit-learn, ONNX,
# TensorBoard, MLflow, matplotlib, Optuna), and torch as a test-only oracle (pinned exactly: an
# unpinned `torch` resolves to a CUDA build).
EXTRAS := dev,ray,sklearn,onnx,tensorboard,mlflow,plot,tune
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]' 'torch==2.13.0'
	@touch $@

# jax (CPU build) and scikit-learn come from the bench extra; torch pinned as for the tests.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q 'torch==2.13.0' -e '.[bench,tune]'
	@touch $@

venv: $(STAMP)

# Fashion-MNIST from Debian's dataset-fashion-mnist, or a directory in $DELTAPROP_FASHION_MNIST.
data:
	@have() { for f in $(FASHION_MNIST_FILES); do \
		[ -f "$$1/$$f.gz" ] || [ -f "$$1/$$f" ] || return 1; done; }; \
	if [ -n "$${DELTAPROP_FASHION_MNIST:-}" ]; then dir="$$DELTAPROP_FASHION_MNIST"; \
	else dir="$(FASHION_MNIST_DIR)"; \
		have "$$dir" || { echo "Fashion-MNIST missing in $$dir: installing dataset-fashion-mnist"; \
			$(call APT_INSTALL,dataset-fashion-mnist) || true; }; \
	fi; \
	have "$$dir" || { \
		echo "error: Fashion-MNIST is not in $$dir and could not be installed." >&2; \
		echo "  Either: apt-get install dataset-fashion-mnist (Debian/Ubuntu; puts it in $(FASHION_MNIST_DIR))," >&2; \
		echo "  or download the four IDX files (gzipped or not) from" >&2; \
		echo "  https://github.com/zalandoresearch/fashion-mnist (data/fashion/):" >&2; \
		echo "    $(addsuffix .gz,$(FASHION_MNIST_FILES))" >&2; \
		echo "  into a directory DIR and run: export DELTAPROP_FASHION_MNIST=DIR" >&2; \
		exit 1; }

clean:
	rm -rf $(VENV) .cache .pytest_cache build dist src/*.egg-info $(PLUGIN)/src/*.egg-info $(PLUGIN)/build
	find . -name __pycache__ -type d -not -path './.git/*' -prune -exec rm -rf {} +
