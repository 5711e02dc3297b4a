#!/usr/bin/env bash
# docker-compose only: a replica's entrypoint. First start: pg_basebackup -R from the
# primary with a physical slot named after the replica; then run as a hot standby.
set -euo pipefail
: "${REPLICA_NAME:?}" "${PG_REPLICATOR_PASSWORD:?}"
export PGPASSWORD=$PG_REPLICATOR_PASSWORD
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until pg_isready -h postgres-primary -p 5432 -q; do sleep 1; done
    rm -rf "${PGDATA:?}"/*
    pg_basebackup -h postgres-primary -p 5432 -U replicator -D "$PGDATA" -R -X stream -C -S "$REPLICA_NAME"
    chmod 700 "$PGDATA"
fi
# A hot standby refuses to start with fewer of these than its primary has (see the
# primary's command in docker-compose.yml): the values must match or exceed them.
exec postgres -c hot_standby=on -c hot_standby_feedback=on -c max_standby_streaming_delay=30s \
    -c max_wal_senders=16 -c max_replication_slots=16 -c max_connections=300 -c shared_buffers=512MB
