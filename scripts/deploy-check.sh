#!/usr/bin/env bash
# Runs the steps of docs/DEPLOY.md on one machine, with 127.0.0.11-.15 standing in for five
# machines: create a three-node cluster from environment settings, add a fourth, drain the
# first, replace a dead third by a fifth. Fails on the first step that does not do what the
# page says. Every node it starts is stopped at the end, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${RAFTFLOW_BIN:?RAFTFLOW_BIN is not set}
WORK=$(mktemp -d)
declare -A PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "logs kept under $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
ip() { echo "127.0.0.1$1"; }
cli() { "$BIN" "$@"; }
fail() { echo "deploy-check: $*" >&2; for f in "$WORK"/n*.log; do echo "--- $f"; tail -n 15 "$f"; done >&2; exit 1; }

# The token file every machine shares, and the token the CLI sends.
(umask 077; echo "$(head -c 24 /dev/urandom | base64 | tr '+/' '-_'),ops,admin" > "$WORK/tokens")
export RAFTFLOW_TOKEN="$(cut -d, -f1 "$WORK/tokens")"
# The CA and a certificate for each machine.
nodes=(); for i in 1 2 3 4 5; do nodes+=(--node "$i=$(ip "$i")"); done
"$BIN" certs --dir "$WORK/certs" "${nodes[@]}" >/dev/null

# Starts node $1 with the settings of its /etc/raftflow/env (the other arguments, VAR=value).
start() {
  local id=$1; shift
  mkdir -p "$WORK/n$id"
  env "$@" RAFTFLOW_DATA_DIR="$WORK/n$id" RAFTFLOW_LOG_FORMAT=json RAFTFLOW_TOKEN_FILE="$WORK/tokens" \
    RAFTFLOW_PEER_CA="$WORK/certs/ca.pem" RAFTFLOW_PEER_CERT="$WORK/certs/node-$id.pem" \
    RAFTFLOW_PEER_KEY="$WORK/certs/node-$id-key.pem" "$BIN" serve >"$WORK/n$id.log" 2>&1 &
  PIDS[$id]=$!
}

# Waits up to 60 s for the Python expression $2 over `cluster status -o json` (as `c`) asked of
# node $1 to be true.
wait_for() {
  local via=$1 expr=$2 what=$3
  for _ in $(seq 1 120); do
    if cli cluster status -o json --addr "$(ip "$via"):7001" 2>/dev/null |
      python3 -c "import json,sys; c=json.load(sys.stdin); sys.exit(0 if ($expr) else 1)" 2>/dev/null; then
      echo "  ok: $what"
      return 0
    fi
    sleep 0.5
  done
  fail "not within 60 s: $what"
}
DATA='[g for g in c["groups"] if g["kind"] == "data"]'
settled_on() { # every data group has 3 voters, all among $@, and nothing moves
  echo "all(len(g['voters']) == 3 and set(g['voters']) <= {$(IFS=,; echo "$*")} for g in $DATA) and not c['placement'].get('replica_moves')"
}
state_is() { echo "any(n['id'] == $1 and n['state'] == '$2' for n in c['nodes'])"; }

echo "creating a cluster"
CLUSTER="1=$(ip 1):7001/$(ip 1):8001,2=$(ip 2):7001/$(ip 2):8001,3=$(ip 3):7001/$(ip 3):8001"
for i in 1 2 3; do start "$i" RAFTFLOW_ID="$i" RAFTFLOW_INITIAL_CLUSTER="$CLUSTER"; done
wait_for 1 "len(c['nodes']) == 3 and all(g['leader'] for g in c['groups'])" "three nodes, every group led"
cli cluster status --addr "$(ip 1):7001,$(ip 2):7001,$(ip 3):7001" >/dev/null
cli definition apply examples/order.yaml --addr "$(ip 1):7001" >/dev/null
cli workflow start order --id deploy-1 --addr "$(ip 2):7001" >/dev/null

echo "adding a machine"
start 4 RAFTFLOW_ID=4 RAFTFLOW_JOIN="http://$(ip 1):7001" \
  RAFTFLOW_CLIENT_LISTEN="$(ip 4):7001" RAFTFLOW_PEER_LISTEN="$(ip 4):8001"
wait_for 2 "$(state_is 4 active)" "node 4 active"
wait_for 2 "$(settled_on 1 2 3 4) and any(4 in g['voters'] for g in $DATA)" "node 4 holds voting replicas"

echo "removing a machine"
cli cluster remove-node 1 --addr "$(ip 2):7001" >/dev/null
wait_for 2 "$(state_is 1 removed) and $(settled_on 2 3 4)" "node 1 removed, every group on 2-4"
# Running until it has exited (then it is a zombie, "Z", until waited for).
running() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [[ "$s" != Z* ]]; }
for _ in $(seq 1 100); do running "${PIDS[1]}" || break; sleep 0.2; done
running "${PIDS[1]}" && fail "node 1's process still runs after its removal"
status=0; wait "${PIDS[1]}" || status=$?
[ "$status" = 0 ] || fail "node 1 exited with status $status, not 0"
unset 'PIDS[1]'
echo "  ok: node 1's process exited with status 0"

echo "replacing a dead machine"
kill -9 "${PIDS[3]}"; unset 'PIDS[3]'
start 5 RAFTFLOW_ID=5 RAFTFLOW_JOIN="http://$(ip 2):7001" \
  RAFTFLOW_CLIENT_LISTEN="$(ip 5):7001" RAFTFLOW_PEER_LISTEN="$(ip 5):8001"
wait_for 2 "$(state_is 5 active)" "node 5 active"
cli cluster remove-node 3 --force --addr "$(ip 2):7001" >/dev/null
wait_for 2 "$(state_is 3 removed) and $(settled_on 2 4 5)" "node 3 removed, every group on 2, 4 and 5"
[ "$(cli workflow get deploy-1 -o json --addr "$(ip 5):7001" | python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])')" = 1 ] ||
  fail "the workflow written at the start is not there"
echo "  ok: the workflow written at the start reads the same through node 5"
echo "deploy-check: every step of docs/DEPLOY.md did what it says"
