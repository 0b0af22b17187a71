#!/usr/bin/env bash
# End-to-end check on a CUDA machine, no download: a random-weight model with Qwen1.5-1.8B's
# architecture (Qwen2, 24 blocks, d_model 2048, 16 heads, MLP 5504, vocab 151936) saved with the
# embedded SmolLM2 tokenizer (49152 ids, a ChatML template like Qwen's), then
#   doctor, train, ortho (--objective continuation, the default; tokens; seed), eval, dump, bench
# on it, each timed, and the bench table printed last. Random weights make the texts garbage;
# what is checked is that every path runs on CUDA in bf16 and what it costs.
#
#   scripts/gpu_check.sh [--cpu-smoke] [--workdir DIR] [--device DEV]
#
# --cpu-smoke runs the same steps on the CPU with a tiny Qwen2 (4 blocks, d_model 64) and small
# sizes, in a couple of minutes: the plumbing of this script, tested by tests/test_gpu_check.py.
# Without --cpu-smoke and without CUDA it stops at once (exit 2). --device defaults to cuda
# (every visible GPU); give cuda:N for one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
workdir=""
device="cuda"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) smoke=1 ;;
    --workdir) workdir="$2"; shift ;;
    --device) device="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
melbo=("$py" -m melbo_tui)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [ "$smoke" = 1 ]; then
  device=cpu
else
  if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    build=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "not importable")
    echo "gpu_check: CUDA is not available here (torch $build): run it on a machine with an NVIDIA GPU and the CUDA build of torch, or pass --cpu-smoke to test the script on the CPU" >&2
    exit 2
  fi
fi

workdir=${workdir:-$(mktemp -d "${TMPDIR:-/tmp}/melbo-gpu-check.XXXXXX")}
mkdir -p "$workdir"
model="$workdir/qwen1.5-1.8b-random"
[ "$smoke" = 1 ] && model="$workdir/qwen2-tiny-random"
log="$workdir/steps.tsv"
: > "$log"

step() {  # step NAME COMMAND...: run, time, stop on failure with the step's name
  local name=$1; shift
  echo "== $name: $*" >&2
  local start=$SECONDS
  if ! "$@"; then
    echo "gpu_check: step '$name' failed (its output is above; files in $workdir)" >&2
    exit 1
  fi
  printf '%s\t%s\n' "$name" "$((SECONDS - start))" >> "$log"
}

build_model() {
  "$py" - "$model" "$smoke" <<'PY'
import sys
from pathlib import Path

import torch
import transformers

from melbo_tui.models import embedded_model_dir

target, smoke = Path(sys.argv[1]), sys.argv[2] == "1"
if (target / "config.json").is_file():
    print(f"model already built: {target}")
    sys.exit(0)
tokenizer = transformers.AutoTokenizer.from_pretrained(str(embedded_model_dir()))
size = (dict(num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
             vocab_size=len(tokenizer)) if smoke else
        dict(num_hidden_layers=24, hidden_size=2048, num_attention_heads=16, num_key_value_heads=16, intermediate_size=5504,
             vocab_size=151936))  # Qwen1.5-1.8B
assert size["vocab_size"] >= len(tokenizer)
config = transformers.Qwen2Config(max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                                  tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, **size)
torch.manual_seed(0)
device = "cpu" if smoke or not torch.cuda.is_available() else "cuda"
with torch.device(device):
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32 if smoke else torch.bfloat16)
# Random init (std 0.02) leaves the residual stream ~50x smaller than a trained model's, so the
# default R = 55 would swamp it and ortho's vectors collapse. Embedding rows of norm ~50, as in
# trained models of this size, put R in the same proportion as on a real model.
with torch.no_grad():
    embedding = model.get_input_embeddings().weight
    embedding.mul_(50.0 / embedding.float().norm(dim=1).median())
model.save_pretrained(target)
tokenizer.save_pretrained(target)
params = sum(p.numel() for p in model.parameters())
print(f"built {target}: {params / 1e9:.2f} B parameters, {config.num_hidden_layers} blocks, d_model {config.hidden_size}")
PY
}

bench_table() {
  "$py" - "$workdir/bench.json" <<'PY'
import json
import sys

from rich.console import Console

from melbo_tui.benchmarks.bench import render_table

Console(width=200).print(render_table(json.load(open(sys.argv[1]))))
PY
}

if [ "$smoke" = 1 ]; then
  train_sizes=(--num-vectors 2 --steps 3 --batch-vectors 2)
  ortho_sizes=(--num-vectors 2 --steps 3)
  dump_sizes=(--rows 0:3 -n 8)
  bench_sizes=(--quick --threads 1)
else
  train_sizes=(--num-vectors 8 --steps 300)
  ortho_sizes=(--num-vectors 16)
  dump_sizes=(-n 48)
  bench_sizes=()
fi
run=(--model "$model" --device "$device")

step "build model" build_model
step doctor "${melbo[@]}" doctor "${run[@]}" --out "$workdir/doctor.txt"
step train "${melbo[@]}" train "${run[@]}" "${train_sizes[@]}" --out "$workdir/train.safetensors"
for objective in continuation tokens seed; do
  step "ortho $objective" "${melbo[@]}" ortho "$workdir/train.safetensors" "${run[@]}" "${ortho_sizes[@]}" \
    --objective "$objective" --out "$workdir/ortho-$objective.safetensors"
done
step eval "${melbo[@]}" eval "$workdir/ortho-continuation.safetensors" "${run[@]}"
step dump "${melbo[@]}" dump "$workdir/ortho-continuation.safetensors" "${run[@]}" "${dump_sizes[@]}" --out "$workdir/dump.txt"
step bench sh -c '"$@" > "'"$workdir/bench.json"'"' sh "${melbo[@]}" bench "${run[@]}" "${bench_sizes[@]}" --json

echo
echo "steps (seconds):"
column -t -s $'\t' "$log" 2>/dev/null || cat "$log"
echo
bench_table
echo "gpu_check: all steps passed; files in $workdir"
