#!/usr/bin/env bash
# Makes (once) the Python virtualenv the console's browser tests run in: Playwright and pytest at
# pinned versions from PyPI. Playwright drives Debian's `chromium` (scripts/deps.sh test installs
# it); Playwright's own browser download is never used. Prints the virtualenv's path.
set -euo pipefail
venv="${RAFTFLOW_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/raftflow/venv}"
want="playwright==1.65.2 pytest==9.2.0"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.raftflow-pins" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check $want >&2
  echo "$want" > "$venv/.raftflow-pins"
fi
echo "$venv"
