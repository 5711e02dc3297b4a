#!/bin/sh
# docker-compose only: registers connector.json with a distributed Connect worker,
# substituting the same ${...} placeholders connect.sh fills locally.
set -eu
url=${CONNECT_URL:-http://connect:8083}
until curl -fsS "$url/connectors" >/dev/null; do sleep 2; done
body=$(sed -e "s|\${PG_HOST}|$PG_HOST|g" -e "s|\${PG_PRIMARY_PORT}|$PG_PRIMARY_PORT|g" \
    -e "s|\${PG_DEBEZIUM_PASSWORD}|$PG_DEBEZIUM_PASSWORD|g" -e "s|\${PG_DB}|$PG_DB|g" \
    -e "s|\${CDC_PARTITIONS}|$CDC_PARTITIONS|g" /debezium/connector.json)
name=$(printf '%s' "$body" | sed -n 's/^ *"name": *"\([^"]*\)".*/\1/p' | head -n 1)
config=$(printf '%s' "$body" | sed -n '/"config"/,$p' | sed '1s/.*"config": *//' | sed '$d')
printf '%s' "$config" | curl -fsS -X PUT -H 'Content-Type: application/json' --data-binary @- "$url/connectors/$name/config"
echo "registered $name"
