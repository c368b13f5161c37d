#!/bin/sh
# One run, both bridges: for each N, voicebridge (default `serve`, no switches) and then the sample bridge, on the
# same machine with the same harness settings, so every row pair is measured minutes apart.
# Usage, from the repository root: bench/compare/side_by_side.sh [CALLS] [STEADY_S] [PREFIX]
# Results: bench/results/PREFIX-voicebridge.json and bench/results/PREFIX-sample.json.
set -eu
CALLS=${1:-10,50,100,150,200,250}
STEADY=${2:-30}
PREFIX=${3:-side}
PY=${PY:-.venv/bin/python}
for N in $(echo "$CALLS" | tr ',' ' '); do
    timeout 600 "$PY" bench/run.py --calls "$N" --steady-s "$STEADY" \
        --label "$PREFIX-voicebridge"
    PY="$PY" bench/compare/run_sample.sh "$PREFIX-sample" "$N" "$STEADY"
done
