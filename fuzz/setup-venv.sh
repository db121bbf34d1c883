#!/usr/bin/env bash
# Create (or check) the NNSmith graph-generation virtualenv.
#
#   usage: fuzz/setup-venv.sh [VENV_DIR]
#
# VENV_DIR defaults to .fuzz-venv at the repo root; a relative VENV_DIR is taken relative to
# the repo root too. Idempotent: on a complete venv with the same pins it only checks them
# (about 2 s). It prints one line on success; on failure, pip's log and exit status 1.
#
# torch is installed FIRST, alone, as torch==2.13.0 (a local CPU wheel), and every later
# pip call runs with a constraints file holding all the pins, so resolving nnsmith's loose
# dependencies ("torch", "onnx", "numpy") can never replace it with a multi-GB CUDA build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-.fuzz-venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PY="${PYTHON:-python3}"

# Exact pins. nnsmith 0.1.0 (2023-03) is the newest nnsmith on PyPI; it only declares
# lower bounds, so everything it (and generate.py) imports is pinned here. onnx/onnxruntime/
# numpy/protobuf/ml_dtypes match the project's .venv. onnxruntime is used only to (re)build
# fuzz/nnsmith-topset.json (generate.py --refresh-topset).
PINS=(
  "torch==2.13.0"
  "nnsmith==0.1.0"
  "onnx==1.23.2"
  "onnxruntime==1.32.0"
  "numpy==2.4.6"
  "protobuf==7.36.2"
  "ml_dtypes==0.6.0"
  "z3-solver==4.15.4.0"
  "hydra-core==1.3.2"
  "hydra-colorlog==1.2.0"
  "omegaconf==2.3.0"
  "multipledispatch==1.0.0"
  "appdirs==1.4.4"
)

STAMP="$VENV/.graphpress-fuzz-pins"
WANT="$(printf '%s\n' "${PINS[@]}")"

check_pins() {  # exit 0 iff every pin is installed at exactly that version
  "$VENV/bin/python" - "${PINS[@]}" <<'PY'
import importlib.metadata as md, sys
bad = []
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have is None or have.split("+")[0] != want:
        bad.append(f"{name}: want {want}, have {have}")
if bad:
    print("fuzz venv: version mismatch: " + "; ".join(bad), file=sys.stderr)
    sys.exit(1)
import nnsmith, torch, onnx, onnxruntime, z3  # noqa: F401  (imports must work too)
PY
}

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && check_pins 2>/dev/null; then
  echo "fuzz venv up to date: $VENV"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
rm -f "$STAMP"
LOG="$VENV/.setup.log"
CONS="$VENV/.constraints.txt"
printf '%s\n' "${PINS[@]}" > "$CONS"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input -q)

run_pip() {
  if ! "${PIP[@]}" "$@" >>"$LOG" 2>&1; then
    grep -v "^WARNING: Location 'file:" "$LOG" >&2 || true
    echo "fuzz venv: pip $* failed (log: $LOG)" >&2
    exit 1
  fi
}

: > "$LOG"
run_pip install "torch==2.13.0"                       # 1. torch alone, local CPU build
run_pip install -c "$CONS" "${PINS[@]:1}"             # 2. the rest, torch held by $CONS
check_pins
printf '%s\n' "${PINS[@]}" > "$STAMP"
echo "fuzz venv ready: $VENV ($(du -sh "$VENV" | cut -f1); torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'), nnsmith 0.1.0)"
