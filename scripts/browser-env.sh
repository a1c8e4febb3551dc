#!/usr/bin/env bash
# Makes (once) the Python virtualenv the console's browser tests run in: Playwright and pytest at
# pinned versions from PyPI. Playwright drives Debian's `chromium` (scripts/deps.sh test installs
# it); Playwright's own browser download is never used. Prints the virtualenv's path.
set -euo pipefail
exec "$(dirname "$0")/venv.sh" "${RAFTFLOW_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/raftflow/venv}" \
  playwright==1.65.2 pytest==9.2.0
