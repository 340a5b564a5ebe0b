# Two commands do all set-up on a fresh machine:
#   make demo   -> creates .venv, installs the project, runs the main job on the embedded default
#   make test   -> creates .venv, installs the project with test extras, runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean lock

install: $(STAMP)

# constraints.txt pins the local CPU wheel of torch; pyproject.toml keeps a compatible range.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q --no-compile -c constraints.txt -e '.[test]'
	@# byte-compile the venv on every core (pip compiles one file at a time: ~56 s of a 98 s install on 2 cores,
	@# this ~30 s); a few third-party files that are not Python 3 (test fixtures) fail to compile, as under pip
	$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1 || true
	touch $(STAMP)

demo: install
	$(VENV)/bin/creagen demo

test: install
	$(PY) -m pytest -v --durations=15

test-fast: install
	$(PY) -m pytest -v -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache

# Lock files for cluster nodes (cluster.yaml, deploy/Dockerfile, deploy/k8s): every runtime
# dependency pinned for Linux x86_64 / CPython 3.11 (the rayproject/ray:*-py311 images).
# CPU nodes: torch's CPU wheel (2.13.0+cpu, from the PyTorch CPU index); GPU nodes: PyPI's CUDA wheel.
# Needs `uv` (pip install uv). Where the PyTorch index is unreachable but the wheel is on disk:
#   make lock TORCH_CPU_SOURCE="--find-links /opt/wheels"
UV ?= uv
TORCH_CPU_SOURCE ?= --extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match
LOCK_FLAGS = pyproject.toml --extra tracking --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--no-emit-package creagen-ray --custom-compile-command "make lock" -q
lock:
	$(UV) pip compile $(LOCK_FLAGS) -c deploy/torch-cpu.txt $(TORCH_CPU_SOURCE) -o deploy/requirements-cpu.lock
	sed -i '1i --extra-index-url https://download.pytorch.org/whl/cpu' deploy/requirements-cpu.lock
	$(UV) pip compile $(LOCK_FLAGS) -c constraints.txt -o deploy/requirements-gpu.lock
