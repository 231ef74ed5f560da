# The README's two commands are `make demo` and `make test`; both run `make setup` first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test clean-venv

setup:
	@bash scripts/setup.sh
	@$(PY) -m pfc_mx.kernels build > /dev/null || echo "[setup] fused kernels unavailable: the Partial FC head uses stock MXNet operators"

demo: setup
	@$(PY) tools/demo.py $(DEMO_ARGS)

test: setup
	@$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
