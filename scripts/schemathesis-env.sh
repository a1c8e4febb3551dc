#!/usr/bin/env bash
# Makes (once) the Python virtualenv the API fuzz test runs Schemathesis from, at a pinned
# version from PyPI. Prints the virtualenv's path.
set -euo pipefail
exec "$(dirname "$0")/venv.sh" "${RAFTFLOW_ST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/raftflow/st-venv}" \
  schemathesis==4.32.5
