# Self-installing entry points. `make demo` and `make test` create .venv on first use;
# later runs only re-install when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean arm-env

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: a loose range would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,tune]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/graphpress demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

# aarch64 cross toolchain + qemu-user (apt), an aarch64 Python sysroot and the aarch64 TVM
# runtime wheel, so tests can run aarch64 artifacts under qemu (scripts/arm-env.sh).
arm-env: $(STAMP)
	PIP=$(BIN)/pip bash scripts/arm-env.sh .arm-env

bench: $(STAMP)
	$(BIN)/python benchmarks/passes.py

clean:
	rm -rf $(VENV) .pytest_cache
