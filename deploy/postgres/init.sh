#!/bin/sh
# Run by the postgres image on the first start (an empty data volume), as the superuser:
# the roles, databases and the audit guard of roles.sql, with the passwords from .env.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v audit_password="$POSTGRES_AUDIT_PASSWORD" \
    -v transform_password="$POSTGRES_TRANSFORM_PASSWORD" \
    -v reader_password="$POSTGRES_READER_PASSWORD" \
    -f /choreo/roles.sql
