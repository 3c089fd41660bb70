# The one place the README's commands point to. Every target is phony; `install` only
# does work when pyproject.toml changed since the last install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Two workers on two cores. Each test module runs whole on one worker, so its module
# fixtures are made once (--dist loadfile), in the order tests/conftest.py gives them (the
# modules marked slow first; --no-loadscope-reorder keeps it).
TEST_WORKERS ?= 2
UV_VERSION := 0.13.8

IMAGE_TAG ?= 0.1.0
KUBECTL := $(VENV)/bin/kubectl

.PHONY: install lock test-runtime test soak demo s3 bench tfserving-suite docs lint manifests images clean

install: $(STAMP)

# uv resolves the same pinned versions as pip and installs them in about 35 s instead of
# 100 s (TensorFlow is 0.6 GB of wheels), which matters for `make demo` and CI on a fresh
# machine. --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, every
# process would otherwise compile TensorFlow's sources again (import 8 s -> 20 s).
# The venv keeps pip for users who want it.
# The environment is the hashed lock (requirements/dev.lock: pyproject.toml's pins with their
# dependencies and the dev tools, the same versions the images' locks hold), so every
# machine gets the same transitive versions; then the project itself, editable, without
# dependencies and without an isolated build (setuptools comes from the lock too).
$(STAMP): pyproject.toml requirements/dev.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) --require-hashes \
		-r requirements/dev.lock
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) --no-deps \
		--no-build-isolation -e .
	@touch $(STAMP)

# Re-resolve the locks after a pin in pyproject.toml or requirements/*.in changed; versions
# not concerned stay as they are (each lock is its own starting point).
LOCK = $(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28
lock: $(STAMP)
	$(LOCK) pyproject.toml requirements/build.in -o requirements/trainer.lock
	$(LOCK) --extra dev pyproject.toml requirements/build.in -o requirements/dev.lock
	$(LOCK) requirements/puller.in requirements/build.in -o requirements/puller.lock
	$(LOCK) requirements/tf-serving-runtime.in -o requirements/tf-serving-runtime.lock
	$(LOCK) --no-deps requirements/tfserving-suite.in -o requirements/tfserving-suite.lock

# TF Serving's TensorFlow (2.20), for the version-skew test: installed before the tests run,
# and again only when its lock changes.
RUNTIME_STAMP := $(VENV)/tf-serving-runtime/.lock-sha256
$(RUNTIME_STAMP): requirements/tf-serving-runtime.lock $(STAMP)
	$(PY) -m tests.compat.runtime
	@touch $@

test-runtime: $(RUNTIME_STAMP)

test: install test-runtime
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20 \
		$(PYTEST_ARGS)

# The long fixed-window runs `make test` leaves out (the two-minute load soak); CI runs both.
soak: install
	$(PY) -m pytest --soak --durations=5 $(PYTEST_ARGS)

demo: install
	$(PY) -m tools.demo

# An S3 store on loopback for local use, without Docker (prints its export lines).
s3: install
	$(PY) -m tools.seaweed $(S3_ARGS)

bench: install
	$(PY) -m tests.benchmarks.run $(BENCH_ARGS)

# TF Serving's own model-server tests against `serving local` (needs a clone of
# github.com/tensorflow/serving: SERVING_REPO=path; pip reaches PyPI once). Not in `make test`.
tfserving-suite: install
	$(PY) -m tools.tfserving_suite --serving-repo $(SERVING_REPO) $(SUITE_ARGS)

# The documentation site from docs/ (mkdocs, Material theme) into site/; --strict: a broken
# link, anchor or a page left out of the nav fails it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

lint: install
	$(PY) -m ruff check commandline contract trainer serving tools tests
	$(VENV)/bin/hadolint trainer/Dockerfile serving/Dockerfile serving/puller.Dockerfile

manifests: install
	@for overlay in k8s/overlays/*/; do \
		echo "# ---- $$overlay"; $(KUBECTL) kustomize $$overlay || exit 1; done

# BUILD_ARGS adds to every build; with a registry, an SBOM and provenance come from BuildKit:
#   make images BUILD="docker buildx build --push --sbom=true --provenance=mode=max" \
#        REGISTRY=registry.example.com/
BUILD ?= docker build
REGISTRY ?=
images:
	@docker info >/dev/null 2>&1 || { echo "make images: no Docker engine answers" >&2; exit 1; }
	$(BUILD) $(BUILD_ARGS) -f trainer/Dockerfile -t $(REGISTRY)vgg16-transfer/trainer:$(IMAGE_TAG) .
	$(BUILD) $(BUILD_ARGS) -f trainer/Dockerfile --build-arg TF_VARIANT=-gpu \
		-t $(REGISTRY)vgg16-transfer/trainer:$(IMAGE_TAG)-gpu .
	$(BUILD) $(BUILD_ARGS) -f serving/puller.Dockerfile -t $(REGISTRY)vgg16-transfer/puller:$(IMAGE_TAG) .
	$(BUILD) $(BUILD_ARGS) -f serving/Dockerfile -t $(REGISTRY)vgg16-transfer/tfserving:$(IMAGE_TAG) .

clean:
	rm -rf .demo .bench .pytest_cache .ruff_cache build *.egg-info
