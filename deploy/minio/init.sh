#!/bin/sh
# One-shot MinIO set-up (the minio/mc image): the lake's buckets, and for each service an
# access key with its own policy (deploy/minio/policies/<service>.json, generated from the
# scopes the embedded stack uses by deploy/render.py). Idempotent: safe to run on every
# `docker compose up` or as a Kubernetes Job; a changed secret key is applied.
set -eu
mc alias set choreo "${MINIO_URL:-http://minio:9000}" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
for bucket in raw staging curated; do
    mc mb --ignore-existing "choreo/$bucket"
done
for service in ingest transform store fraud; do
    upper=$(echo "$service" | tr '[:lower:]' '[:upper:]')
    eval "access=\${S3_${upper}_ACCESS_KEY:?set S3_${upper}_ACCESS_KEY}"
    eval "secret=\${S3_${upper}_SECRET_KEY:?set S3_${upper}_SECRET_KEY}"
    # `create` replaces an existing policy of the same name, so a changed file applies.
    mc admin policy create choreo "choreo-$service" "/policies/$service.json"
    mc admin user add choreo "$access" "$secret"
    mc admin policy attach choreo "choreo-$service" --user "$access" 2>/dev/null \
        || echo "policy choreo-$service already attached to $service's key"
done
echo "MinIO ready: buckets raw, staging, curated; keys for ingest, transform, store, fraud"
