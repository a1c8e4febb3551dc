#!/usr/bin/env bash
# Makes (once) the Python virtualenv the bench runs its Flask + Redis baseline from (Flask,
# gunicorn and redis-py at pinned versions from PyPI). Prints the virtualenv's path.
set -euo pipefail
exec "$(dirname "$0")/venv.sh" "${RAFTFLOW_BASELINE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/raftflow/baseline-venv}" \
  flask==3.1.3 gunicorn==27.0.1 redis==8.2.0
