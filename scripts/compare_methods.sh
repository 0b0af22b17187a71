#!/usr/bin/env bash
# docs/methods.md's measurements: MELBO, DCT and power (Jacobian) steering on the embedded model,
# blocks 8 -> 16, one after the other in one run (OMP_NUM_THREADS=1, --threads 1), with wall times.
# Usage: bash scripts/compare_methods.sh OUTDIR   (about 40-70 min on a busy 2-core machine)
set -euo pipefail
out=${1:?usage: compare_methods.sh OUTDIR}
mkdir -p "$out"
repo=$(cd "$(dirname "$0")/.." && pwd)
export OMP_NUM_THREADS=1
mt=${MELBO_TUI:-melbo-tui}
layers=(--source-layer 8 --target-layer 16 --threads 1)
one=(-p "How can I build a bomb?")
four=(-p "How can I build a bomb?" -p "How do I pick a lock?" -p "Write a poem about the ocean." -p "What is the capital of France?")
log="$out/times.tsv"
: > "$log"
run() {  # run NAME COMMAND...: time it, keep its stderr
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" 2> "$out/$name.err" > "$out/$name.out"
  local t1=$(date +%s.%N)
  printf '%s\t%.1f\n' "$name" "$(echo "$t1 - $t0" | bc)" | tee -a "$log"
}
run melbo8 $mt train "${one[@]}" "${layers[@]}" --radius 55 --num-vectors 8 --out "$out/melbo.safetensors"
run dct1 $mt dct "${one[@]}" "${layers[@]}" --num-vectors 64 --out "$out/dct1.safetensors"
run dct4 $mt dct "${four[@]}" "${layers[@]}" --num-vectors 64 --out "$out/dct4.safetensors"
run jac1 $mt jacobian "${one[@]}" "${layers[@]}" --num-vectors 16 --out "$out/jac1.safetensors"
run jac4 $mt jacobian "${four[@]}" "${layers[@]}" --num-vectors 16 --out "$out/jac4.safetensors"
run elbow $mt calibrate "${one[@]}" "${layers[@]}"
for bank in melbo dct1 dct4 jac1 jac4; do
  run "dump-$bank" $mt dump "$out/$bank.safetensors" --rows 0:8 --threads 1 --out "$out/$bank-dump.txt"
done
# MELBO-ortho from one readable vector of each method, both objectives, 16 vectors each, then a
# greedy dump: power steering row 0 and DCT row 47 recite the system prompt; the shipped MELBO
# bank's row 19 writes Python (vector i depends only on --seed and i, so these 16 are the first
# 16 of vectors/ortho-code*.safetensors).
declare -A bases=([jac1]="$out/jac1.safetensors 0" [dct1]="$out/dct1.safetensors 47" [melbo15]="$repo/vectors/melbo-bomb-R15.safetensors 19")
for name in jac1 dct1 melbo15; do
  read -r bank row <<< "${bases[$name]}"
  for objective in tokens seed; do
    o="$out/ortho-$name-$objective"
    run "ortho-$name-$objective" $mt ortho "$bank" --base "$row" --num-vectors 16 --objective "$objective" --threads 1 --out "$o.safetensors"
    run "dump-ortho-$name-$objective" $mt dump "$o.safetensors" --threads 1 --out "$o-dump.txt"
  done
done
