#!/usr/bin/env bash
# Starts, grows, stops and shows the local cluster that `make cluster` runs: nodes 1-3 create
# it (--initial-cluster), any further node joins the running cluster (--join). Node i serves
# its API on 127.0.0.1:700i and its peers on 127.0.0.1:800i (i up to 9). Data, logs and pid
# files live under .cluster/ (git-ignored). SECURE=1 (remembered by the cluster) gives the nodes
# certificates of a local CA for mutual TLS between peers (.cluster/certs) and API tokens
# (.cluster/tokens, one per role).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${RAFTFLOW_BIN:?RAFTFLOW_BIN is not set}
DIR=${CLUSTER_DIR:-$PWD/.cluster}
NGROUPS=${RAFTFLOW_GROUPS:-8}
WANT=${NODES:-3}
INITIAL=(1 2 3)
client() { echo "127.0.0.1:700$1"; }
peer() { echo "127.0.0.1:800$1"; }
members() {
  local out=""
  for i in "${INITIAL[@]}"; do out+="${out:+,}$i=$(client "$i")/$(peer "$i")"; done
  echo "$out"
}
# The pid in $1's pid file, if that process is still the raftflow node we started.
our_pid() {
  local f="$DIR/n$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--data-dir $DIR/n$1 " && echo "$pid"
}
# Every node id this cluster has started (it has a data directory), in order.
known_nodes() {
  local ids=()
  for d in "$DIR"/n[0-9]; do [ -d "$d" ] && ids+=("${d##*/n}"); done
  [ "${#ids[@]}" -gt 0 ] && printf '%s\n' "${ids[@]}" | sort -n
  return 0
}

secure() { [ "${SECURE:-0}" = 1 ] || [ -f "$DIR/secure" ]; }
# The token of role $1 in the cluster's token file.
token() { sed -n "s/^\([^,#]*\),[^,]*,$1\$/\1/p" "$DIR/tokens" | head -n1; }

# Certificates for nodes 1-9 and a token per role, made once.
secure_setup() {
  touch "$DIR/secure"
  if [ ! -f "$DIR/certs/node-9.pem" ]; then
    local nodes=()
    for i in $(seq 1 9); do nodes+=(--node "$i=127.0.0.1"); done
    "$BIN" certs --dir "$DIR/certs" "${nodes[@]}" >/dev/null
  fi
  if [ ! -f "$DIR/tokens" ]; then
    (
      umask 077
      echo "# TOKEN,NAME,ROLE"
      for role in admin operator worker reader; do
        echo "$(head -c 24 /dev/urandom | base64 | tr '+/' '-_'),local-$role,$role"
      done
    ) >"$DIR/tokens"
  fi
}

# The flags that make node $1 secure, when the cluster is.
secure_flags() {
  secure || return 0
  echo "--token-file $DIR/tokens --peer-ca $DIR/certs/ca.pem --peer-cert $DIR/certs/node-$1.pem --peer-key $DIR/certs/node-$1-key.pem"
}

launch() {
  local i=$1 pid
  if pid=$(our_pid "$i"); then
    echo "node $i already running (pid $pid)"
    return 0
  fi
  local how
  if [ "$i" -le 3 ]; then
    how=(--initial-cluster "$(members)" --groups "$NGROUPS")
  else
    # Any running member will do; node 1's address is the one to remember.
    how=(--join "http://$(client 1)" --client-listen "$(client "$i")" --peer-listen "$(peer "$i")")
  fi
  # shellcheck disable=SC2086
  nohup "$BIN" serve --id "$i" "${how[@]}" --data-dir "$DIR/n$i" $(secure_flags "$i") \
    ${RAFTFLOW_EXTRA_FLAGS:-} >>"$DIR/n$i.log" 2>&1 &
  echo $! >"$DIR/n$i.pid"
}

# Waits until nodes $@ answer /readyz.
wait_ready() {
  echo -n "waiting for nodes $* to be ready "
  for _ in $(seq 1 120); do
    local ready=0
    for i in "$@"; do
      curl -fs "http://$(client "$i")/readyz" >/dev/null 2>&1 && ready=$((ready + 1))
    done
    if [ "$ready" = "$#" ]; then
      echo " ready."
      for i in "$@"; do
        echo "  node $i  client http://$(client "$i")  peer $(peer "$i")  log $DIR/n$i.log"
      done
      return 0
    fi
    echo -n "."
    sleep 0.5
  done
  echo " not ready after 60 s; see $DIR/n*.log" >&2
  return 1
}

start() {
  if ! [[ "$WANT" =~ ^[3-9]$ ]]; then
    echo "NODES=$WANT: a local cluster has 3 to 9 nodes" >&2
    exit 2
  fi
  mkdir -p "$DIR"
  if [ "${SECURE:-0}" = 1 ]; then secure_setup; fi
  local ids=()
  for i in $(seq 1 "$WANT") $(known_nodes); do
    [[ " ${ids[*]} " == *" $i "* ]] || ids+=("$i")
  done
  for i in "${INITIAL[@]}"; do launch "$i"; done
  wait_ready "${INITIAL[@]}"
  for i in "${ids[@]}"; do if [ "$i" -gt 3 ]; then launch "$i"; fi; done
  local joined=()
  for i in "${ids[@]}"; do if [ "$i" -gt 3 ]; then joined+=("$i"); fi; done
  [ "${#joined[@]}" = 0 ] || wait_ready "${joined[@]}"
  echo
  if secure; then
    echo "secure: mutual TLS between peers ($DIR/certs), API tokens in $DIR/tokens; the CLI needs one:"
    echo "  export RAFTFLOW_TOKEN=$(token admin)"
  fi
  echo "try:  $BIN cluster status   (or open http://127.0.0.1:7001/ui/)"
  echo "grow: make cluster-join      stop: make cluster-stop"
}

# Adds the next node (4, 5, ...) to the running cluster.
join() {
  local last next
  last=$(known_nodes | tail -n1)
  next=$(( ${last:-3} + 1 ))
  if [ "$next" -gt 9 ]; then
    echo "a local cluster has at most 9 nodes" >&2
    exit 2
  fi
  if ! curl -fs "http://$(client 1)/readyz" >/dev/null 2>&1; then
    echo "node 1 does not answer; start the cluster first (make cluster)" >&2
    exit 1
  fi
  launch "$next"
  wait_ready "$next"
  echo "node $next joined; see it with: $BIN cluster nodes"
}

stop() {
  local any=0
  for i in $(known_nodes); do
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
  local addrs=()
  for i in $(known_nodes); do
    if pid=$(our_pid "$i"); then echo "node $i: running (pid $pid), client $(client "$i")"; else echo "node $i: stopped"; fi
    addrs+=("$(client "$i")")
  done
  [ "${#addrs[@]}" -gt 0 ] || addrs=("$(client 1)")
  # The CLI moves on to the next address when one does not answer.
  if secure && [ -z "${RAFTFLOW_TOKEN:-}" ]; then export RAFTFLOW_TOKEN; RAFTFLOW_TOKEN=$(token admin); fi
  "$BIN" cluster status --addr "$(IFS=,; echo "${addrs[*]}")" || echo "no node answers /v1/cluster"
}

case "${1:-}" in
  start) start ;;
  join) join ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|join|stop|status" >&2; exit 2 ;;
esac
