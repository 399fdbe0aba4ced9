# unetpipe: set-up, demo, checks and tests.
#   make test   set up .venv (and the Debian packages the tests need), run make lint and
#               make docs, then every test
#   make demo   set up .venv and run the workflow on the built-in demo
#   make lint   ruff, snakefmt --check and snakemake --lint
#   make docs   build the documentation site into build/site (mkdocs build --strict)
#   make format format the Snakefile and rule files with snakefmt
# See README.md and docs/getting-started.md for the same steps by hand.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build. GPU users: install your CUDA build of torch into $(VENV) first.
TORCH ?= torch==2.13.0
CORES ?= 2
PYTEST_ARGS ?=
# the workflow's line length, as ruff's for the package (pyproject.toml)
SNAKEFMT = $(BIN)/snakefmt --line-length 100
WORKFLOW_FILES = Snakefile $(wildcard workflow/rules/*.smk)

# Xvfb and Mesa for the napari tests; slurm-wlm and munge for the cluster tests;
# the X/EGL libraries Qt 6 needs on a bare machine.
APT_PACKAGES = xvfb xauth libgl1-mesa-dri libegl1 libgl1 libxkbcommon-x11-0 libxcb-cursor0 \
	libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
	libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libdbus-1-3 libfontconfig1 slurm-wlm munge

.PHONY: demo test setup setup-dev setup-docs system-deps lint docs format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, so the package's torch range is already met and pip pulls no CUDA wheels
$(VENV)/.setup: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.setup-dev: $(VENV)/.setup
	$(BIN)/python -m pip install --quiet -e ".[dev,napari,cluster,bioimageio]"
	touch $@

$(VENV)/.setup-docs: $(VENV)/.setup
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $@

setup: $(VENV)/.setup

setup-dev: $(VENV)/.setup-dev

setup-docs: $(VENV)/.setup-docs

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES)

system-deps:
	@if ! command -v apt-get >/dev/null 2>&1; then \
		echo "system-deps: no apt-get here; install Xvfb, Mesa, slurm-wlm and munge yourself" \
		     "(the napari and cluster tests are skipped without them)"; \
	else \
		missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
		if [ -z "$$missing" ]; then exit 0; fi; \
		if [ "$$(id -u)" = 0 ]; then sudo=; \
		elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
		else echo "system-deps: not root and no password-less sudo; missing:" $$missing \
		          "(the napari and cluster tests are skipped without them)"; exit 0; fi; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends \
			$$missing >/dev/null; \
	fi

# lint and docs run first: a lint finding or a docs build warning fails make test.
# pytest's exit status 5 means "no tests collected": not a failure here.
test: system-deps setup-dev lint docs
	@export PATH="$(abspath $(BIN)):$$PATH"; \
	if command -v xvfb-run >/dev/null 2>&1; then \
		xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest $(PYTEST_ARGS); \
	else \
		python -m pytest $(PYTEST_ARGS); \
	fi; \
	status=$$?; if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

lint: setup-dev
	$(BIN)/ruff check unetpipe tests benchmarks docs
	$(SNAKEFMT) --check $(WORKFLOW_FILES)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint

format: setup-dev
	$(SNAKEFMT) $(WORKFLOW_FILES)

# strict: a warning (a broken link or anchor, a docstring that does not parse) is an error
docs: setup-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "docs: build/site/index.html"

clean:
	rm -rf results .snakemake resources/demo build/site
