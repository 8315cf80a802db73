#!/usr/bin/env bash
# Install Choreo with its dev dependencies into .venv and run the test suite. The tests
# start their own nats-server, S3 server and PostgreSQL on free loopback ports.
#   Usage: scripts/test.sh [pytest args]      e.g. scripts/test.sh -m "not e2e" -x
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=dev EXTRAS=dev source scripts/venv.sh
source scripts/promtool.sh
source scripts/chromium.sh
exec python -m pytest "$@"
