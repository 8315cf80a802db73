#!/usr/bin/env bash
# Re-pin requirements/*.lock from pyproject.toml (exact versions and sha256 hashes), after a
# change to the dependencies there. Needs pip-tools (installed into a venv of its own here).
# The locks are for CPython 3.11 on Linux, what the image and CI run.
#   Usage: scripts/lock.sh [--upgrade]
set -euo pipefail
cd "$(dirname "$0")/.."
tools=.venv-lock
[ -x "$tools/bin/pip-compile" ] || {
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet "pip-tools>=7.4"
}
export CUSTOM_COMPILE_COMMAND="scripts/lock.sh"
lock() {  # lock NAME [EXTRA...]
  local name=$1 args=()
  shift
  for extra in "$@"; do args+=(--extra "$extra"); done
  "$tools/bin/pip-compile" --quiet --generate-hashes --strip-extras --no-emit-index-url \
    --no-emit-find-links "${args[@]}" \
    "${UPGRADE[@]}" --output-file "requirements/$name.lock" pyproject.toml
  # The dev extra names choreo[...] itself: pip-compile then pins this checkout by path
  # (no hash, another machine's path). The scripts install Choreo with `-e .` anyway.
  "$tools/bin/python" - "requirements/$name.lock" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = re.sub(r"# WARNING: pip install will require[^\n]*\n#[^\n]*\nchoreo @ [^\n]*\n(    #[^\n]*\n)*", "", text)
open(path, "w").write(text)
PY
}
UPGRADE=()
[ "${1:-}" = "--upgrade" ] && UPGRADE=(--upgrade)
lock runtime otel         # the image of ingest, store, audit, fraud and the CLI
lock transform pathway otel  # the transform image
lock local pathway stack  # scripts/quickstart.sh: the embedded stack
lock dev dev              # scripts/test.sh and CI: everything
