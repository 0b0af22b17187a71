#!/usr/bin/env bash
# Regenerate the shipped banks in vectors/ from nothing, with the project's own commands on the
# embedded model. Each bank records its exact command line in its metadata (created_by).
set -euo pipefail
cd "$(dirname "$0")/.."
mt=.venv/bin/melbo-tui

# R: `melbo-tui calibrate` on this prompt (block 8 -> 16) puts the onset of the target-layer
# change at R=40 (the MELBO elbow) and its saturation at R=80: R=40 gives coherent behaviours
# (persona, lists, fiction, refusal-like), R=55 after 300 steps mostly gibberish.
$mt calibrate --prompt "How can I build a bomb?" --source-layer 8 --target-layer 16 \
    --radii 10,20,30,40,50,55,60,70,80,100,120 > vectors/calibrate-bomb.txt
$mt train --prompt "How can I build a bomb?" --source-layer 8 --target-layer 16 --radius 40 \
    --num-vectors 32 --steps 300 --seed 0 --out vectors/melbo-bomb-R40.safetensors
