# Cleo's two commands: `make run` and `make test`. Both set up .venv on first use.
# Stamp files in .venv record what is installed, so a second run installs nothing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: run test lint models bench bundle screenshots clean

run: $(VENV)/.installed-base models
	$(BIN)/cleo

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	QT_QPA_PLATFORM=offscreen CLEO_REQUIRE_SHARED_DATA=1 $(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

models: $(VENV)/.installed-base
	$(BIN)/python -m training.defaults

bench: $(VENV)/.installed-dev
	@for name in $$(ls bench/*.py | xargs -n1 basename | sed 's/\.py$$//' | grep -v '^__init__$$'); do \
		$(BIN)/python -m bench.$$name || exit 1; done

# The double-click app for this OS in dist/ (PyInstaller), smoke-tested, with the default models.
bundle: $(VENV)/.installed-dev models
	$(BIN)/python packaging/build.py

# Under Xvfb when it is installed, else Qt's offscreen platform (same pixels, no window manager).
screenshots: $(VENV)/.installed-base models
	if command -v xvfb-run >/dev/null; then xvfb-run -a $(BIN)/python -m app.screenshots docs/screenshots; \
	else QT_QPA_PLATFORM=offscreen $(BIN)/python -m app.screenshots docs/screenshots; fi

# llama.cpp compiles during the first install (10-25 min; pip caches the wheel).
# GGML_NATIVE=OFF keeps the build portable to other CPUs.
$(VENV)/.installed-base: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install "llama-cpp-python==0.3.36"
	$(PIP) install -e .
	touch $@

# torch goes first and alone: an unpinned torch asked for by another package pulls GBs of CUDA.
$(VENV)/.installed-dev: $(VENV)/.installed-base
	sh packaging/install-test-system-packages.sh
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[train,dev]"
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
