# The two commands: `make demo` and `make test`. Both build .venv from the pinned requirement
# files when it is missing or when those files changed, and reuse it otherwise. A .venv that make
# did not build (no .requirements-hash: made by hand, e.g. for another CUDA runtime) is never
# deleted: its packages are checked against the pins instead.
SHELL := bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
REQS := environments/requirements-cpu.txt environments/requirements-nodeps.txt environments/requirements-dev.txt pyproject.toml
PROFILE ?= quick
PYTEST_ARGS ?=

.PHONY: venv demo test mutation lab benchmark bench-deps clean-venv

venv:
	@set -eo pipefail; \
	want=$$(cat $(REQS) | sha256sum | cut -c1-16); \
	if [ -x $(BIN)/python ] && [ "$$(cat $(VENV)/.requirements-hash 2>/dev/null)" = "$$want" ]; then exit 0; fi; \
	if [ -x $(BIN)/python ] && [ ! -f $(VENV)/.requirements-hash ]; then \
	  if $(BIN)/python environments/check_pins.py environments/requirements-dev.txt environments/requirements-nodeps.txt; then exit 0; fi; \
	  echo "[venv] $(VENV) was not made by make, so it is kept; install the pins above into it, or remove it to let make build one" >&2; exit 1; \
	fi; \
	echo "[venv] creating $(VENV) from the pinned requirements ($$want)"; start=$$(date +%s); \
	rm -rf $(VENV); $(PY) -m venv $(VENV); \
	$(BIN)/pip install -q --disable-pip-version-check -r environments/requirements-dev.txt 2>&1 | { grep -v 'is ignored: it is neither' || true; }; \
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r environments/requirements-nodeps.txt 2>&1 | { grep -v 'is ignored: it is neither' || true; }; \
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | { grep -v 'is ignored: it is neither' || true; }; \
	$(BIN)/python -c "import support, torch, diffusers, papermill" ; \
	echo "$$want" > $(VENV)/.requirements-hash; \
	echo "[venv] ready in $$(( $$(date +%s) - start )) s"

demo: venv
	$(BIN)/python -m support.pipeline --profile $(PROFILE)

test: venv
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# Mutation testing of the research-critical functions (tests/mutation.toml); GROUPS= picks some.
mutation: venv
	$(BIN)/python tests/mutation.py $(GROUPS)

# The benchmarks' peers, apart from the project's packages (environments/requirements-bench.txt).
BENCH_PACKAGES ?= $(HOME)/.cache/synthcxr/bench-packages
bench-deps: venv
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --target $(BENCH_PACKAGES) -r environments/requirements-bench.txt

lab: venv
	$(BIN)/python -m ipykernel install --user --name synthcxr --display-name "Python (synthcxr .venv)"
	$(BIN)/jupyter lab --ServerApp.root_dir=. notebooks/00_data.ipynb   # browser at the repository: outputs/ in reach

clean-venv:
	rm -rf $(VENV)
