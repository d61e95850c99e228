#!/usr/bin/env bash
# The fairness grid of bench/fairness_synthetic.py, resumable: runs already in
# bench/results/fairness_synthetic.jsonl are skipped. One process at a time, one torch thread.
#   nohup bench/run_fairness_grid.sh > bench_out/fairness_grid.log 2>&1 &
# 1. CosFace on 5 seeds of each candidate design, stopping a candidate at its first seed that fails a
#    per-seed validity check; 2. CosFace on 5 seeds of the control (noise floor); 3. every method on the
#    first candidate that passed; 4. the main settings on the control.
# WAIT_PID: a bench process already running, to finish before this one starts. CANDIDATES: the designs
# to try in order; CONTROL: the noise-floor design (null: identical groups); METHODS: the methods of step 3
# (default: all of bench/fairness_synthetic.py's), one per line.
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PYTHON:-.venv/bin/python}
B="$PY bench/fairness_synthetic.py"
if [ -n "${WAIT_PID:-}" ]; then while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 20; done; fi
VALID=""
for design in ${CANDIDATES:-dense varied tight tighter}; do
  if $B --design "$design" --methods cosface --fail-fast && $B --design "$design" --report --require-valid > /dev/null
  then VALID=$design; break; fi
  echo "design $design is not a valid benchmark; trying the next candidate"
done
CONTROL=${CONTROL:-null}
$B --design "$CONTROL" --methods cosface || exit 1
if [ -z "$VALID" ]; then echo "no candidate design passed the validity checks"; exit 3; fi
echo "valid design: $VALID"
if [ -n "${METHODS:-}" ]; then mapfile -t M <<< "$METHODS"; $B --design "$VALID" --methods "${M[@]}" || exit 1
else $B --design "$VALID" || exit 1; fi
$B --design "$VALID" "$CONTROL" --report
