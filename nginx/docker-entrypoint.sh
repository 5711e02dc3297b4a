#!/bin/sh
# docker-compose only: renders the same nginx.conf the local stack uses, then runs nginx.
set -eu
# The official image has the stream module compiled in: nothing to load.
export NGINX_LOAD_STREAM=
vars='${NGINX_LOAD_STREAM} ${NGINX_PREFIX} ${NGINX_LOG_DIR} ${NGINX_LISTEN_HOST} ${NGINX_HTTP_PORT} ${NGINX_PG_PORT} ${API_1_ADDR} ${API_2_ADDR} ${WEBHOOK_ADDR} ${REPLICA1_ADDR} ${REPLICA2_ADDR}'
mkdir -p "$NGINX_PREFIX/tmp"
envsubst "$vars" </paystream/nginx.conf >/etc/nginx/nginx.conf
exec nginx -g 'daemon off;'
