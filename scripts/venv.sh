#!/usr/bin/env bash
# Makes (once) a Python virtualenv at DIR with PACKAGES installed from PyPI at the pinned
# versions given, and prints its path. A virtualenv of other pins is made anew.
# Usage: scripts/venv.sh DIR PACKAGE==VERSION...
set -euo pipefail
venv="$1"
shift
want="$*"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.raftflow-pins" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
  echo "$want" > "$venv/.raftflow-pins"
fi
echo "$venv"
