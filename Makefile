# Two entry points for a fresh Linux machine: `make demo` and `make test`.
# Both create .venv in the checkout and install what they need, system packages included.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# Xvfb + Mesa + Qt's xcb libraries for napari under a real X server; dicom3tools for dciodvfy.
SYSTEM_PACKAGES := xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-icccm4 \
	libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 \
	libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 dicom3tools orthanc orthanc-dicomweb

.PHONY: demo test test-fast lint system-deps venv clean demo-bundle wheel-check constraints

system-deps:
	@if ! command -v dpkg >/dev/null 2>&1; then \
		echo "not a Debian/Ubuntu system: install Xvfb, Mesa and dicom3tools yourself"; exit 0; fi; \
	missing=""; for p in $(SYSTEM_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

# The versions of constraints.txt (the tested set), every extra (the Qt binding, PACS, Dask cluster) and the
# test tools.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[all,test]"
	touch $@

venv: $(STAMP)

# Static checks first (seconds): style and docstrings, the package's floors, types of the core.
lint: venv
	$(VENV)/bin/ruff check napari_icnn tests benchmarks training
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# The whole suite with a line-coverage report, one pytest-xdist worker per core (at most TEST_WORKERS); a test
# file runs whole on one worker, so its module fixtures are built once. pytest's exit code 5 (no tests ran) fails
# it, and so does coverage below the floor in pyproject.toml ([tool.coverage.report]). TEST_WORKERS=0 runs it in
# one process.
TEST_WORKERS ?= 4
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n auto --maxprocesses=$(TEST_WORKERS) --dist loadfile)
test: system-deps venv lint
	$(PY) -m pytest $(XDIST) --cov=napari_icnn --cov-report=term:skip-covered $(PYTEST_ARGS)

# The quick loop while developing: everything but the tests marked slow.
test-fast: system-deps venv
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

demo: system-deps venv
	$(VENV)/bin/icnn demo --out demo-output

# Rebuilds the model shipped in napari_icnn/models/demo (about 50 minutes on a 2-core CPU): the "demo" recipe of
# napari_icnn/recipes.py, as icnn demo --full trains it, on the shipped model's own cohorts (training/demo_bundle.py).
demo-bundle: venv
	$(PY) -m training.demo_bundle --work build/demo-bundle

# The built sdist and wheel installed (not editable) into a fresh venv and run from outside the checkout
# (a few minutes): .ci/wheel-check says what it checks.
wheel-check: venv
	bash .ci/wheel-check

# Rewrites constraints.txt with the newest versions pyproject.toml allows (then run make test and make
# wheel-check before committing it).
CONSTRAINTS_VENV := build/constraints-venv
constraints:
	rm -rf $(CONSTRAINTS_VENV) && python3 -m venv $(CONSTRAINTS_VENV)
	$(CONSTRAINTS_VENV)/bin/pip install -q -e ".[all,test]"
	{ sed -n '/^#/p' constraints.txt; $(CONSTRAINTS_VENV)/bin/pip freeze --exclude-editable \
		| sed -E 's/^(torch[a-z]*==[^+]+)\+.*/\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(CONSTRAINTS_VENV)

clean:
	rm -rf $(VENV) demo-output build dist *.egg-info .pytest_cache
