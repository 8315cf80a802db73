# Sourced by the other scripts: create .venv (Python >= 3.11), install Choreo into it and put
# it first on PATH. LOCK names the pinned set to install (requirements/<LOCK>.lock: exact
# versions, hash-checked); EXTRAS the optional dependencies it stands for, resolved from
# pyproject.toml instead when the interpreter is not the locks' CPython 3.11.
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Choreo needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=..." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> Creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
lock="requirements/${LOCK:?}.lock"
# Re-install only when pyproject.toml or the lock changed since the last install.
stamp=".venv/.choreo-installed-${LOCK}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$lock" -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  if .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "==> Installing Choreo and $lock into .venv"
    .venv/bin/python -m pip install --quiet --require-hashes -r "$lock"
    .venv/bin/python -m pip install --quiet --no-deps -e .
  else
    echo "==> Installing Choreo (.[${EXTRAS:-}], unpinned: $lock is for Python 3.11) into .venv"
    .venv/bin/python -m pip install --quiet -e ".[${EXTRAS:-}]"
  fi
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
