# Sourced by scripts/test.sh: put Prometheus's `promtool` (which checks and unit-tests the
# alert rules, tests/deploy/test_alerts.py) into .venv/bin. It is not on PyPI: it comes out
# of Debian's `prometheus` package, unpacked rather than installed (installing would set up a
# Prometheus service on the machine).
if [ ! -x .venv/bin/promtool ] && command -v apt-get >/dev/null; then
  echo "==> Fetching promtool (Debian's prometheus package) into .venv/bin"
  debs=$(mktemp -d)
  chmod 755 "$debs"  # apt's download user must be able to write there
  if ! (cd "$debs" && apt-get download -q prometheus >/dev/null 2>&1); then
    apt-get update -q >/dev/null 2>&1 || true
    (cd "$debs" && apt-get download -q prometheus >/dev/null 2>&1) || true
  fi
  for deb in "$debs"/prometheus_*.deb; do
    [ -f "$deb" ] && dpkg-deb --fsys-tarfile "$deb" | tar -x -O ./usr/bin/promtool > .venv/bin/promtool \
      && chmod 755 .venv/bin/promtool
  done
  rm -rf "$debs"
  [ -s .venv/bin/promtool ] || { rm -f .venv/bin/promtool; echo "promtool: not available" >&2; }
fi
