#!/usr/bin/env bash
# Seconds from typing `melbo-tui` to its first frame in a real terminal (tmux), as a user sees it:
# Python's start, the imports, the app's first paint (the banks and the model load after it).
#   bash scripts/first_frame.sh [RUNS]      # prints each run and the median
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
command -v tmux >/dev/null || { echo "first_frame: tmux is not installed" >&2; exit 2; }
times=()
for i in $(seq "$runs"); do
    session="melbo-first-frame-$$-$i"
    start=$(date +%s.%N)
    tmux new-session -d -s "$session" -x 120 -y 40 ".venv/bin/melbo-tui; sleep 5"
    until tmux capture-pane -p -t "$session" | grep -q "melbo-tui"; do sleep 0.02; done
    end=$(date +%s.%N)
    tmux send-keys -t "$session" q
    sleep 1
    tmux kill-session -t "$session" 2>/dev/null || true
    t=$(echo "$end - $start" | bc)
    times+=("$t")
    echo "run $i: ${t} s"
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median of %d runs: %.2f s\n", NR, a[int((NR+1)/2)]}'
