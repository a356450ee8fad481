# Entry points: `make test`, `make demo` and `make serve`. Each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WORKDIR ?= runs/demo
# pytest-xdist workers: one per core, capped so each JAX process keeps a core.
PYTEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(max(1, min(4, os.cpu_count() or 1)))")

.PHONY: venv test test-fast demo serve bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30 tests

test-fast: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" --durations=15 tests

demo: $(STAMP)
	$(PY) -m psm_jax.demo --workdir $(WORKDIR)

# The inpainting page on the demo model (http://127.0.0.1:8000; SERVE_FLAGS="--port 8080" etc.). A finished
# demo has written report.json; otherwise `make demo` trains (or resumes) it first.
serve: $(STAMP)
	test -f $(WORKDIR)/report.json || $(PY) -m psm_jax.demo --workdir $(WORKDIR)
	$(PY) -m psm_jax.serve --workdir $(WORKDIR) $(SERVE_FLAGS)

clean:
	rm -rf $(VENV) runs
