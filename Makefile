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

.PHONY: demo test test-fast lint system-deps venv clean demo-bundle

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

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[gui,test]"
	touch $@

venv: $(STAMP)

# Static checks first (seconds): style and docstrings, the package's floors, types of the core.
lint: venv
	$(VENV)/bin/ruff check napari_icnn tests benchmarks training
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# The whole suite (about 10 minutes on a 2-core CPU) with a line-coverage report; pytest's exit code 5 (no
# tests ran) fails it, and so does coverage below the floor in pyproject.toml ([tool.coverage.report]).
test: system-deps venv lint
	$(PY) -m pytest --cov=napari_icnn --cov-report=term:skip-covered $(PYTEST_ARGS)

# The quick loop while developing: everything but the tests marked slow.
test-fast: system-deps venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: system-deps venv
	$(VENV)/bin/icnn demo --out demo-output

# Rebuilds the model shipped in napari_icnn/models/demo (about 12 minutes on a 2-core CPU): an ordinary CNN,
# then the interpretable fine-tuning that starts from it. Settings live in training/demo_bundle.env.
include training/demo_bundle.env
DEMO_WORK ?= build/demo-bundle
demo-bundle: venv
	rm -rf $(DEMO_WORK)
	$(VENV)/bin/icnn synth $(DEMO_WORK)/train --n $(DEMO_N_TRAIN) --size $(DEMO_IMAGE_SIZE) --seed $(DEMO_TRAIN_SEED)
	$(VENV)/bin/icnn synth $(DEMO_WORK)/val --n $(DEMO_N_VAL) --size $(DEMO_IMAGE_SIZE) --seed $(DEMO_VAL_SEED)
	$(VENV)/bin/icnn train --ordinary --data $(DEMO_WORK)/train --val $(DEMO_WORK)/val --out $(DEMO_WORK)/ordinary \
		--size $(DEMO_SIZE) --epochs $(DEMO_EPOCHS) --warmup-epochs $(DEMO_WARMUP) --categories decision --seed $(DEMO_SEED)
	$(VENV)/bin/icnn train --data $(DEMO_WORK)/train --val $(DEMO_WORK)/val --out $(DEMO_WORK)/icnn \
		--init $(DEMO_WORK)/ordinary --size $(DEMO_SIZE) --epochs $(DEMO_FT_EPOCHS) --warmup-epochs 0 \
		--lr $(DEMO_FT_LR) --free-fraction $(DEMO_FREE_FRACTION) --categories $(DEMO_CATEGORIES) --seed $(DEMO_SEED)
	rm -rf napari_icnn/models/demo && mkdir -p napari_icnn/models
	cp -r $(DEMO_WORK)/icnn napari_icnn/models/demo && rm -rf napari_icnn/models/demo/checkpoints

clean:
	rm -rf $(VENV) demo-output build *.egg-info .pytest_cache
