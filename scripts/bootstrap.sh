#!/usr/bin/env bash
# Create (or refresh) the virtual environment at .venv with the `lookalike`
# command and everything the server and tests need. Idempotent and quick when
# nothing changed: it reinstalls only when pyproject.toml does.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.lookalike-installed"

find_python() {
  local candidate
  for candidate in "${LOOKALIKE_PYTHON:-}" python3.12 "$HOME/.pyenv/versions/3.12.1/bin/python3.12" \
      "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "Python 3.12 not found: install it (pyenv install 3.12) or set LOOKALIKE_PYTHON" >&2
  return 1
}

want="$(cat "$root/pyproject.toml" "$root/client/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  python="$(find_python)"
  echo "creating $venv with $python" >&2
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root/client" -e "$root[server,test]" >&2
echo "$want" > "$stamp"
