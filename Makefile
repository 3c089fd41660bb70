# The one place the README's commands point to. Every target is phony; `install` only
# does work when pyproject.toml changed since the last install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m tools.demo

lint: install
	$(PY) -m ruff check trainer serving tools tests

clean:
	rm -rf .demo .pytest_cache .ruff_cache build *.egg-info
