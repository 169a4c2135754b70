# Beyond Transcription, executed: the two commands are `make test` and `make book`.
#
# Both start with `make setup`, which works on a fresh Debian/Ubuntu machine and is idempotent (stamp files make a
# second run instant): system packages via apt-get (only those missing; needs root or sudo), a virtual environment
# in .venv with this repository installed editable, the pinned JavaScript (npm ci) copied into book/_vendor/.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
# PyTorch's OpenMP threads sleep instead of spinning while they wait: with two processes on two cores, spinning
# makes decoding several times slower (benchmarks/results/threads.json). The package sets it on import too.
export OMP_WAIT_POLICY ?= PASSIVE
VENV := .venv
PY := $(VENV)/bin/python
JB := $(VENV)/bin/jupyter-book
# Strict: any warning or failing cell fails the build. --all re-reads every page (cheap: execution is cached);
# without it Sphinx skips unchanged pages, so a second build after a failed chapter would pass on a stale page.
BUILD_FLAGS := -W -n --keep-going --all
FAST_OUT := _build/fast
PYTEST_ARGS ?=
TESTS ?= tests
# make test runs pytest in this many worker processes (pytest-xdist): each test file's tests together on one
# worker, each chapter (a Jupyter kernel) on whichever worker is free, everything on one thread per worker
# (tests/conftest.py, tests/test_chapters.py); then, in a second session, the report pages, which read what the
# chapters saved. PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
# make book executes this many chapters at once, each kernel on (cores / BOOK_JOBS) threads.
BOOK_JOBS ?= 2

# Debian packages the chapters use: audio decoding (ffmpeg, sox) and the offline speech bank (Asterisk prompts,
# PocketSphinx test recordings, espeak-ng and flite voices).
APT_PACKAGES := ffmpeg sox libsox-fmt-all asterisk-core-sounds-en asterisk-core-sounds-en-g722 \
                pocketsphinx-testdata espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k \
                festvox-us-slt-hts sonic-pi-samples asterisk-moh-opsound-wav
# Only for screenshots and the in-browser check of the built book (skipped without it). On Ubuntu, chromium is a
# snap and apt cannot install it in a container: a failure to install it is a warning.
APT_OPTIONAL := chromium

STAMP_PIP := $(VENV)/.stamp-pip
STAMP_NPM := node_modules/.stamp-npm
STAMP_VENDOR := book/_vendor/.stamp-vendor
STAMP_APT_OPTIONAL := .stamp-apt-optional-failed

.PHONY: help setup system-deps test book book-fast check-book screenshots notebooks student clean distclean

help:
	@echo "make test         run the tests and every chapter in fast mode (ASRINTERP_FAST=1)"
	@echo "make book         execute every chapter in full mode and build _build/html/ (strict)"
	@echo "make book-fast    build the book in fast mode into $(FAST_OUT)/_build/html/ (its own cache)"
	@echo "make check-book   check the built pages: nothing loaded from other sites, widgets render offline"
	@echo "make screenshots  headless-Chromium screenshots of the built pages into _build/screenshots/"
	@echo "make notebooks    regenerate chapters/*.ipynb (the Colab copies of chapters/*.md) after editing a chapter"
	@echo "make student      student versions of the chapters (solutions removed) into student/"
	@echo "make setup        system packages, .venv, JavaScript (run by test and book)"
	@echo "make clean        remove _build/ and book/_vendor/;  make distclean also removes .venv and node_modules"

setup: system-deps $(STAMP_PIP) $(STAMP_VENDOR)

# Installs only what is missing; runs `apt-get update` only then. Not Debian-based: checks commands and says what
# to install.
system-deps:
	@missing=""; optional=""; \
	if command -v dpkg-query >/dev/null 2>&1; then \
	    installed() { case "$$(dpkg-query -W -f='$${Status}' "$$1" 2>/dev/null)" in *"ok installed") return 0 ;; esac; return 1; }; \
	    for pkg in $(APT_PACKAGES); do installed "$$pkg" || missing="$$missing $$pkg"; done; \
	    if [ ! -e $(STAMP_APT_OPTIONAL) ]; then \
	        for pkg in $(APT_OPTIONAL); do installed "$$pkg" || optional="$$optional $$pkg"; done; \
	    fi; \
	    command -v $(PYTHON) >/dev/null 2>&1 || missing="$$missing python3 python3-venv"; \
	    if command -v $(PYTHON) >/dev/null 2>&1 && [ ! -x $(PY) ] && ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
	        missing="$$missing python3-venv"; \
	    fi; \
	    command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	    if [ -n "$$missing$$optional" ]; then \
	        if [ "$$(id -u)" = 0 ]; then sudo=""; \
	        elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	        elif [ -n "$$missing" ]; then \
	            echo "make setup: missing system packages:$$missing; install them as root: apt-get install$$missing" >&2; exit 1; \
	        else echo "make setup: warning: not installed:$$optional (screenshots need it)" >&2; exit 0; fi; \
	        apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get"; \
	        echo "make setup: installing system packages:$$missing$$optional"; \
	        $$apt update -qq; \
	        if [ -n "$$missing" ]; then $$apt install -y -qq --no-install-recommends $$missing; fi; \
	        if [ -n "$$optional" ]; then \
	            $$apt install -y -qq --no-install-recommends $$optional || { \
	                echo "make setup: warning: could not install$$optional (screenshots need it); continuing," \
	                     "and not trying again until $(STAMP_APT_OPTIONAL) is deleted" >&2; \
	                touch $(STAMP_APT_OPTIONAL); }; \
	        fi; \
	    fi; \
	else \
	    for cmd in $(PYTHON) npm ffmpeg sox espeak-ng flite; do \
	        command -v "$$cmd" >/dev/null 2>&1 || missing="$$missing $$cmd"; \
	    done; \
	    if [ -n "$$missing" ]; then \
	        echo "make setup: not a Debian-based system; please install:$$missing (and the data of$(APT_PACKAGES))" >&2; \
	    fi; \
	fi

$(PY): | system-deps
	$(PYTHON) -m venv $(VENV)

# Reinstalled when pyproject.toml changes. A torch already in .venv that satisfies the pin is kept (GPU users
# install their CUDA build first; see book/how_to_run.md). The filter only drops pip's notes about empty local
# index folders; errors and warnings still show. pip compiles the installed modules one at a time; compileall
# does the same work on every core (94 s -> 79 s for the whole step on a 2-core machine). Like pip, it skips the
# few files of the dependencies that do not compile (their test data), hence the `|| true`.
$(STAMP_PIP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --no-compile --disable-pip-version-check --progress-bar off -e '.[test,book]' 2>&1 \
	    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	$(PY) -m compileall -j 0 -qq "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	@touch $@

$(STAMP_NPM): package.json package-lock.json | system-deps
	npm ci --ignore-scripts --omit=dev --no-audit --no-fund --loglevel=error
	@touch $@

$(STAMP_VENDOR): $(STAMP_NPM) scripts/vendor_js.py
	$(PYTHON) scripts/vendor_js.py
	@touch $@

# pytest exit status 5 means it collected no tests: a failure here, said out loud.
test: setup
	@rc=0; ASRINTERP_FAST=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=15 -m "not after_chapters" \
	    $(PYTEST_ARGS) $(TESTS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5); treating that as a failure" >&2; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; \
	ASRINTERP_FAST=1 $(PY) -m pytest -q -m after_chapters $(PYTEST_ARGS) $(TESTS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then rc=0; fi; \
	exit $$rc

# Full mode, whatever the calling shell exports. The chapters run BOOK_JOBS at a time into the build's execution
# cache first (scripts/execute_chapters.py; BOOK_JOBS=1 runs them one by one), then Jupyter Book builds the pages
# from it. Each failing chapter's traceback: printed by that script, or _build/html/reports/ for the other pages.
book: setup
	@ASRINTERP_FAST=0 $(PY) scripts/execute_chapters.py --jobs $(BOOK_JOBS) --cache _build/.jupyter_cache || \
	    { echo "make book: a chapter failed (traceback above)" >&2; exit 1; }
	@ASRINTERP_FAST=0 $(JB) build . $(BUILD_FLAGS) || \
	    { echo "make book: the build failed (see above; tracebacks of failing chapters are in _build/html/reports/)" >&2; exit 1; }
	@$(MAKE) --no-print-directory check-book BOOK_HTML_DIR=_build/html
	@echo "make book: open _build/html/index.html"

# Fast mode into its own output folder: its Sphinx environment and execution cache (myst-nb keeps the cache next
# to the output when _config.yml leaves execute.cache empty) never mix with the full book's.
book-fast: setup
	@ASRINTERP_FAST=1 $(PY) scripts/execute_chapters.py --jobs $(BOOK_JOBS) --cache $(FAST_OUT)/_build/.jupyter_cache || \
	    { echo "make book-fast: a chapter failed (traceback above)" >&2; exit 1; }
	@ASRINTERP_FAST=1 $(JB) build . --path-output $(FAST_OUT) $(BUILD_FLAGS) || \
	    { echo "make book-fast: the build failed; see $(FAST_OUT)/_build/html/reports/" >&2; exit 1; }
	@$(MAKE) --no-print-directory check-book BOOK_HTML_DIR=$(FAST_OUT)/_build/html
	@echo "make book-fast: open $(FAST_OUT)/_build/html/index.html"

# The built pages load nothing from other sites and the vendored widgets render (tests/test_built_book.py).
check-book:
	@BOOK_HTML_DIR=$(BOOK_HTML_DIR) $(PY) -m pytest -q -p no:cacheprovider tests/test_built_book.py

screenshots:
	scripts/screenshot.sh

# chapters/*.ipynb are generated from chapters/*.md (Colab opens only .ipynb); tests/test_notebooks.py fails when
# they are out of date.
notebooks: $(STAMP_PIP)
	$(PY) scripts/notebooks.py colab

student: $(STAMP_PIP)
	$(PY) scripts/notebooks.py student --out student

clean:
	rm -rf _build book/_vendor book/_vendor.tmp book/_vendor.old student

distclean: clean
	rm -rf $(VENV) node_modules *.egg-info .pytest_cache $(STAMP_APT_OPTIONAL)
