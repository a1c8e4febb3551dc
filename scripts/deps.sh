#!/usr/bin/env bash
# Installs (as root, with apt-get) or names the system packages raftflow needs to build, run
# and test. Usage: scripts/deps.sh [build|cluster|test|bench|profile]
set -euo pipefail
need=()
# bindgen (clang-sys) loads libclang itself: a file named exactly `libclang.so` or
# `libclang-N.so` in LIBCLANG_PATH or under /usr/lib and /usr/local/lib. The runtime package
# (libclang1-N) ships only `libclang.so.1` / `libclang-N.so.1`, which clang-sys does not try, so
# those do not count.
have_libclang() {
  local d f
  for d in ${LIBCLANG_PATH:-} /usr/local/llvm*/lib* /usr/local/lib*/*/* /usr/local/lib*/* /usr/local/lib* \
    /usr/lib*/*/* /usr/lib*/* /usr/lib*; do
    [ -d "$d" ] || continue
    for f in "$d"/libclang.so "$d"/libclang-*.so; do
      [ -e "$f" ] && return 0
    done
  done
  return 1
}
have_libclang || need+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ "${1:-build}" = bench ]; then
  # The comparison runs etcd 3.4 from Debian; the chart draws its labels with DejaVu Sans.
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
  # The events-wrk cells: an independent load tool beside our generator; the simple
  # service the bench sets raftflow beside (Flask, from PyPI, on Redis).
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
fi
if [ "${1:-build}" = profile ]; then
  # Instruction counts of a transition: callgrind, and a Python driver.
  command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
fi
if [ "${1:-build}" = test ]; then
  # The failure suite: private network namespaces, packet filters, and a fake clock.
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v iptables >/dev/null 2>&1 || need+=(iptables)
  command -v unshare >/dev/null 2>&1 || need+=(util-linux)
  [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || need+=(faketime)
  # The bench's etcd driver is tested against a real etcd, its wrk cells with wrk, and its
  # baseline with a real Redis.
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  # The report plot draws its labels with DejaVu Sans.
  [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
  # The console's browser tests: Debian's Chromium driven by Playwright for Python (in a
  # virtualenv that scripts/browser-env.sh makes; Playwright's own browser download is not used).
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
  if [ "$(id -u)" != 0 ]; then
    echo "note: the failure tests create network namespaces and iptables rules: run \`make test\` as root" >&2
  fi
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing missing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "raftflow needs these Debian packages: ${need[*]}" >&2
  echo "install them with: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
