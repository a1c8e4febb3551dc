#!/usr/bin/env bash
# Starts, stops and shows the local three-node cluster that `make cluster` runs.
# Data, logs and pid files live under .cluster/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${RAFTFLOW_BIN:?RAFTFLOW_BIN is not set}
DIR=${CLUSTER_DIR:-$PWD/.cluster}
NGROUPS=${RAFTFLOW_GROUPS:-8}
NODES=(1 2 3)
client() { echo "127.0.0.1:700$1"; }
peer() { echo "127.0.0.1:800$1"; }
members() {
  local out=""
  for i in "${NODES[@]}"; do out+="${out:+,}$i=$(client "$i")/$(peer "$i")"; done
  echo "$out"
}
# The pid in $1's pid file, if that process is still the raftflow node we started.
our_pid() {
  local f="$DIR/n$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--data-dir $DIR/n$1 " && echo "$pid"
}

start() {
  mkdir -p "$DIR"
  for i in "${NODES[@]}"; do
    if pid=$(our_pid "$i"); then
      echo "node $i already running (pid $pid)"
      continue
    fi
    # shellcheck disable=SC2086
    nohup "$BIN" serve --id "$i" --initial-cluster "$(members)" --data-dir "$DIR/n$i" \
      --groups "$NGROUPS" ${RAFTFLOW_EXTRA_FLAGS:-} >>"$DIR/n$i.log" 2>&1 &
    echo $! >"$DIR/n$i.pid"
  done
  echo -n "waiting for all nodes to be ready "
  for _ in $(seq 1 120); do
    ready=0
    for i in "${NODES[@]}"; do
      curl -fs "http://$(client "$i")/readyz" >/dev/null 2>&1 && ready=$((ready + 1))
    done
    if [ "$ready" = "${#NODES[@]}" ]; then
      echo " ready."
      for i in "${NODES[@]}"; do
        echo "  node $i  client http://$(client "$i")  peer $(peer "$i")  log $DIR/n$i.log"
      done
      echo
      echo "try:  $BIN cluster status   (or open http://127.0.0.1:7001/ui/)"
      echo "stop: make cluster-stop"
      return 0
    fi
    echo -n "."
    sleep 0.5
  done
  echo " not ready after 60 s; see $DIR/n*.log" >&2
  return 1
}

stop() {
  local any=0
  for i in "${NODES[@]}"; do
    if pid=$(our_pid "$i"); then
      any=1
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      echo "stopped node $i (pid $pid)"
    fi
    rm -f "$DIR/n$i.pid"
  done
  [ "$any" = 1 ] || echo "no cluster nodes running"
}

status() {
  for i in "${NODES[@]}"; do
    if pid=$(our_pid "$i"); then echo "node $i: running (pid $pid), client $(client "$i")"; else echo "node $i: stopped"; fi
  done
  local addrs=()
  for i in "${NODES[@]}"; do addrs+=("$(client "$i")"); done
  # The CLI moves on to the next address when one does not answer.
  "$BIN" cluster status --addr "$(IFS=,; echo "${addrs[*]}")" || echo "no node answers /v1/cluster"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
