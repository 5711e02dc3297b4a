#!/usr/bin/env bash
# docker-compose only: runs once in the official postgres image's initdb hook, with the
# same setup.sql the local stack uses, and opens replication to the compose network.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -U postgres -d postgres \
    -v app_password="$PG_APP_PASSWORD" -v replicator_password="$PG_REPLICATOR_PASSWORD" \
    -v debezium_password="$PG_DEBEZIUM_PASSWORD" -v analyst_password="$PG_ANALYST_PASSWORD" \
    -v db=paystream -f /paystream/setup.sql
cp /paystream/pg_hba.conf "$PGDATA/pg_hba.conf"
echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
echo "host replication all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
