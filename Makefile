# Two commands do all set-up on a fresh machine:
#   make demo   -> creates .venv, installs the project, runs the main job on the embedded default
#   make test   -> creates .venv, installs the project with test extras, runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

# constraints.txt pins the local CPU wheel of torch; pyproject.toml keeps a compatible range.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/creagen demo

test: install
	$(PY) -m pytest -v --durations=15

test-fast: install
	$(PY) -m pytest -v -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
