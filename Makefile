# cryofire_nb developer tasks (GNU make).
#
#   make install        .venv/ with the package (editable) and its dev tools
#   make test           fast tests + committed notebooks (nbval-lax)
#   make test-slow      tests marked `slow` or `cryodrgn`
#   make check-notebooks  notebooks are committed executed, in order, without volatile metadata
#   make run-notebooks  re-execute notebooks/*.ipynb in place, strip volatile metadata, check
#   make site           the executed notebooks as static HTML pages with an index, in site/
#   make test-browser   notebook 05 in headless JupyterLab + Chromium (Playwright): widget, lasso, files
#   make demo           cryofire-nb demo -o demo_out
#   make bench          every bench/ script against cryoDRGN (needs make cryodrgn-venv)
#   make bench-train    bench/bench_train.py: ours vs cryoDRGN training, same budget (BENCH_ARGS=...)
#   make cryodrgn-venv  .venv-cryodrgn/ with cryoDRGN 4.3.1 (CPU torch) for side-by-side checks
#   make clean / distclean
#
# Needs only python3 >= 3.10 and pip. torch is pinned to 2.13.0 (pyproject.toml); on a
# machine whose pip does not already find a CPU wheel, pass e.g.
#   make install TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# to avoid the multi-GB CUDA build.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
TORCH_VERSION := 2.13.0
TORCH_PIP_ARGS ?=
CRYODRGN_VERSION := 4.3.1

VENV := .venv
VENV_BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CRYODRGN_VENV := .venv-cryodrgn
CRYODRGN_INSTALLED := $(CRYODRGN_VENV)/.installed

# Thread counts pinned for reproducible, CI-sized runs (2 cores); tests/conftest.py pins
# torch's own pool as well. Override on the command line: make test THREADS=8
THREADS ?= 2
# make test runs its files on JOBS pytest-xdist processes of TEST_THREADS threads each
# (JOBS x TEST_THREADS = the 2 cores): most tests and notebook cells are too small for a
# second thread to pay, so two files at a time finish sooner than one file on two threads.
# Each file (each notebook's cells, in order) stays on one process (--dist loadfile).
JOBS ?= 2
TEST_THREADS ?= $(shell echo $$(( $(THREADS) / $(JOBS) > 0 ? $(THREADS) / $(JOBS) : 1 )))
env_for = OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=$(1) MKL_NUM_THREADS=$(1) \
	OPENBLAS_NUM_THREADS=$(1) NUMEXPR_NUM_THREADS=$(1) MPLBACKEND=Agg
RUN_ENV := $(call env_for,$(THREADS))

PYTEST_MARKERS ?= not slow and not cryodrgn
PYTEST_ARGS ?=
NOTEBOOKS := $(wildcard notebooks/*.ipynb)
# nbval collects the notebooks only when they exist, so `make test` works before they do.
NBVAL_ARGS := $(if $(NOTEBOOKS),--nbval-lax --nbval-current-env $(NOTEBOOKS))

.PHONY: help install test test-slow check-notebooks run-notebooks site test-browser demo bench bench-train \
	cryodrgn-venv cryodrgn-check clean distclean

help:
	@sed -n '3,15p' $(firstword $(MAKEFILE_LIST)) | sed 's/^# \{0,1\}//'

# ---------------------------------------------------------------- install
install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "error: $(PYTHON) is older than 3.10; pass PYTHON=python3.11"; exit 1; }
	test -x $(VENV_BIN)/python || $(PYTHON) -m venv $(VENV)
	$(VENV_BIN)/python -m pip install --quiet --upgrade pip
	$(VENV_BIN)/python -m pip install $(TORCH_PIP_ARGS) "torch==$(TORCH_VERSION)"
	$(VENV_BIN)/python -m pip install -e ".[dev]"
	touch $@

# ---------------------------------------------------------------- tests
# pytest exits 5 when it collects nothing; that is not a failure of the code.
# $(1): pytest's arguments; $(2): threads per process (default THREADS)
define run_pytest
	$(call env_for,$(or $(2),$(THREADS))) $(VENV_BIN)/pytest $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc
endef

XDIST_ARGS := $(if $(filter-out 0 1,$(JOBS)),-n $(JOBS) --dist loadfile)

# The notebooks come first: they are the longest files, and started early they overlap the rest.
test: $(INSTALLED)
	@$(call run_pytest,-m "$(PYTEST_MARKERS)" $(NBVAL_ARGS) tests/ $(XDIST_ARGS) --durations=15 $(PYTEST_ARGS),$(TEST_THREADS))

test-slow: $(INSTALLED)
	@$(call run_pytest,-m "slow or cryodrgn" tests/ $(PYTEST_ARGS))

check-notebooks: $(INSTALLED)
	$(VENV_BIN)/python tools/check_notebooks.py $(NOTEBOOKS)

# Browser check: JupyterLab on a random localhost port with a token, notebook 05 run in
# headless Chromium driven by Playwright (Python), plotly widget rendered, a lasso drawn,
# the selection files checked; screenshots in browser_out/ (git-ignored). Uses the
# system Chromium (CHROMIUM=/usr/bin/chromium; Debian: apt-get install chromium), never
# `playwright install` (no browser downloads).
CHROMIUM ?= /usr/bin/chromium
BROWSER_INSTALLED := $(VENV)/.browser-installed

$(BROWSER_INSTALLED): pyproject.toml | $(INSTALLED)
	$(VENV_BIN)/python -m pip install -e ".[dev,browser]"
	touch $@

test-browser: $(INSTALLED) $(BROWSER_INSTALLED)
	@test -x $(CHROMIUM) || { echo "error: $(CHROMIUM) not found; install Chromium (Debian: apt-get install -y chromium) or pass CHROMIUM=/path"; exit 1; }
	$(RUN_ENV) $(VENV_BIN)/python tools/browser_check.py --chromium $(CHROMIUM) --out browser_out

# Restart-and-run-all from the command line, so counts run 1, 2, 3, ... in cell order.
# Pick some with: make run-notebooks NB="notebooks/01_*.ipynb"
NB ?= $(NOTEBOOKS)
run-notebooks: $(INSTALLED)
	$(RUN_ENV) $(VENV_BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=3600 --ExecutePreprocessor.kernel_name=python3 $(NB)
	$(VENV_BIN)/python tools/check_notebooks.py --fix $(NB)

# Static HTML of the committed notebooks (nothing re-executed), readable without Jupyter:
# open site/index.html. site/ is git-ignored.
SITE ?= site
site: $(INSTALLED)
	$(VENV_BIN)/python tools/build_site.py --out $(SITE) $(NOTEBOOKS)

# ---------------------------------------------------------------- run
demo: $(INSTALLED)
	$(RUN_ENV) $(VENV_BIN)/cryofire-nb demo -o demo_out

bench: $(INSTALLED) $(CRYODRGN_INSTALLED)
	$(RUN_ENV) $(VENV_BIN)/python bench/roundtrip_d64.py
	$(RUN_ENV) $(VENV_BIN)/python bench/compare_backproject_cryodrgn.py
	$(RUN_ENV) $(VENV_BIN)/python bench/bench_train.py $(BENCH_ARGS)

# Training images/s, pose error and conformation recovery of cryofire-nb train against
# cryoDRGN abinit / abinit_het_old / train_vae under one wall-clock budget per tool (needs
# make cryodrgn-venv); e.g. make bench-train BENCH_ARGS="--n 1500 --minutes 1"
BENCH_ARGS ?=
bench-train: $(INSTALLED)
	$(RUN_ENV) $(VENV_BIN)/python bench/bench_train.py $(BENCH_ARGS)

# ---------------------------------------------------------------- cryoDRGN side by side
# cryoDRGN 4.3.1 asks for torch>=2, so the CPU torch is installed first and pinned again
# alongside cryodrgn: pip then keeps it instead of pulling a CUDA build.
cryodrgn-venv: $(CRYODRGN_INSTALLED)

$(CRYODRGN_INSTALLED):
	test -x $(CRYODRGN_VENV)/bin/python || $(PYTHON) -m venv $(CRYODRGN_VENV)
	$(CRYODRGN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CRYODRGN_VENV)/bin/python -m pip install $(TORCH_PIP_ARGS) "torch==$(TORCH_VERSION)"
	$(CRYODRGN_VENV)/bin/python -m pip install "cryodrgn==$(CRYODRGN_VERSION)" "torch==$(TORCH_VERSION)"
	$(MAKE) --no-print-directory cryodrgn-check
	touch $@

cryodrgn-check:
	@for cmd in backproject_voxel abinit abinit_het_old train_vae; do \
		$(CRYODRGN_VENV)/bin/cryodrgn $$cmd --help > /dev/null \
			|| { echo "cryodrgn $$cmd --help failed"; exit 1; }; \
		echo "cryodrgn $$cmd --help: ok"; \
	done
	@$(CRYODRGN_VENV)/bin/python -c 'import torch, cryodrgn; \
		print("cryodrgn", cryodrgn.__version__, "torch", torch.__version__, \
		"cuda build" if torch.version.cuda else "cpu build")'

# ---------------------------------------------------------------- clean
clean:
	rm -rf build dist .pytest_cache demo_out bench/out *.egg-info site
	find . \( -path ./$(VENV) -o -path ./$(CRYODRGN_VENV) -o -path ./.git \) -prune -o \
		\( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print \
		| xargs -r rm -rf

distclean: clean
	rm -rf $(VENV) $(CRYODRGN_VENV)
