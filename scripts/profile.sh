#!/usr/bin/env bash
# Counts the instructions a transition costs, with valgrind's callgrind: timing on this host
# drifts by 2x (see the README's Performance section); instruction counts do not.
# Starts three nodes under callgrind on 127.0.0.1:97x1-97x3 (peers 98x1-98x3), with slow Raft
# timers so that valgrind's slowdown causes no elections, creates CLIENTS workflows, warms up,
# then counts exactly N transitions (CLIENTS closed-loop clients over all nodes) and prints
# instructions per transition by node and by library. callgrind files stay in OUT for
# callgrind_annotate. Usage: scripts/profile.sh OUT [N] [CLIENTS] [WORKLOAD [WORKFLOWS]]
# WORKLOAD is `transitions` (the default) or `events` (an `update` with a 200-byte payload on
# one of WORKFLOWS (default 1000) orders with 1 KiB contexts, picked at random).
set -euo pipefail
BIN=${RAFTFLOW_BIN:?RAFTFLOW_BIN is not set}
OUT=$1
N=${2:-3000}
CLIENTS=${3:-64}
WORKLOAD=${4:-transitions}
WORKFLOWS=$CLIENTS
[ "$WORKLOAD" = events ] && WORKFLOWS=${5:-1000}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
members=""
for i in 1 2 3; do members+="${members:+,}$i=127.0.0.1:97${i}1/127.0.0.1:98${i}1"; done
nodes=127.0.0.1:9711,127.0.0.1:9721,127.0.0.1:9731
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
for i in 1 2 3; do
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.n$i" \
    "$BIN" serve --id "$i" --initial-cluster "$members" --data-dir "$OUT/n$i" --groups 8 \
    --heartbeat-ms 500 --election-min-ms 4000 --election-max-ms 8000 --write-timeout-ms 60000 \
    >"$OUT/n$i.log" 2>&1 &
  pids+=($!)
done
echo -n "starting three nodes under callgrind "
for _ in $(seq 1 240); do
  ready=0
  for i in 1 2 3; do curl -fs "http://127.0.0.1:97${i}1/readyz" >/dev/null 2>&1 && ready=$((ready + 1)); done
  [ "$ready" = 3 ] && break
  echo -n "."
  sleep 1
done
[ "$ready" = 3 ] || { echo " not ready after 240 s; see $OUT/n*.log" >&2; exit 1; }
echo " ready"
python3 "$HERE/profile.py" setup "$nodes" "$WORKFLOWS" "$WORKLOAD"
# The balancer moves each group's leadership to its preferred node once that node caught up.
sleep 15
python3 "$HERE/profile.py" run "$nodes" 300 "$CLIENTS" "$WORKFLOWS" "$WORKLOAD" >/dev/null
for p in "${pids[@]}"; do callgrind_control -i on "$p" >/dev/null 2>&1; done
python3 "$HERE/profile.py" run "$nodes" "$N" "$CLIENTS" "$WORKFLOWS" "$WORKLOAD"
for p in "${pids[@]}"; do
  callgrind_control -d "$p" >/dev/null 2>&1
  callgrind_control -i off "$p" >/dev/null 2>&1
done
python3 "$HERE/profile.py" summary "$N" "$OUT"/callgrind.n{1,2,3}.1 | tee "$OUT/summary.txt"
