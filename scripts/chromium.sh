# Sourced by scripts/test.sh: the console's browser tests (tests/e2e/test_console.py) drive
# Debian's `chromium` through its `chromium-driver` with Selenium. Installed with apt-get when
# missing and when we may (root, as in CI); a test tool's own browser download is never used.
if ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; } \
  && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "==> Installing Debian's chromium and chromium-driver (the console's browser tests)"
  if ! apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
      || echo "chromium: not available (the browser tests will be skipped)" >&2
  fi
fi
