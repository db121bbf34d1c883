# Self-installing entry points. `make demo` and `make test` create .venv on first use;
# later runs only re-install when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

FUZZ_VENV := .fuzz-venv
N ?= 500
SEED ?= 0
JOBS ?= 2

.PHONY: demo test bench install clean arm-env fuzz fuzz-env browser-env

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: a loose range would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,tune,rpc]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/graphpress demo

test: $(STAMP) fuzz-env browser-env
	GRAPHPRESS_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25 tests

# Debian's Chromium: the HTML report is tested in a real headless browser (scripts/browser-env.sh).
browser-env:
	bash scripts/browser-env.sh

# NNSmith (graph generator for the differential fuzzer) in its own virtualenv: it pins its own
# dependencies and needs torch's legacy TorchScript exporter (fuzz/setup-venv.sh).
fuzz-env:
	bash fuzz/setup-venv.sh $(FUZZ_VENV)

# Differential fuzzing: N NNSmith graphs from SEED, every pass family and the x86 compile
# against ONNX Runtime on the generated graph (fuzz/differential.py); the tally is printed.
fuzz: $(STAMP) fuzz-env
	$(FUZZ_VENV)/bin/python fuzz/generate.py --out .fuzz-cache/graphs-$(SEED)-$(N) --count $(N) --seed $(SEED)
	$(BIN)/python fuzz/differential.py .fuzz-cache/graphs-$(SEED)-$(N) --jobs $(JOBS) --json .fuzz-cache/results-$(SEED)-$(N).json

# aarch64 cross toolchain + qemu-user (apt), an aarch64 Python sysroot and the aarch64 TVM
# runtime wheel, so tests can run aarch64 artifacts under qemu (scripts/arm-env.sh).
arm-env: $(STAMP)
	PIP=$(BIN)/pip bash scripts/arm-env.sh .arm-env

bench: $(STAMP)
	$(BIN)/python benchmarks/passes.py

clean:
	rm -rf $(VENV) $(FUZZ_VENV) .fuzz-cache .pytest_cache
