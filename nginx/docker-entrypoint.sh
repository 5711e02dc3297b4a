#!/bin/sh
# docker-compose only: renders the same nginx.conf the local stack uses, then runs nginx.
set -eu
vars='${NGINX_MODULES_DIR} ${NGINX_PREFIX} ${NGINX_LOG_DIR} ${NGINX_LISTEN_HOST} ${NGINX_HTTP_PORT} ${NGINX_PG_PORT} ${API_1_ADDR} ${API_2_ADDR} ${WEBHOOK_ADDR} ${REPLICA1_ADDR} ${REPLICA2_ADDR}'
mkdir -p "$NGINX_PREFIX/tmp"
envsubst "$vars" </paystream/nginx.conf >/etc/nginx/nginx.conf
exec nginx -g 'daemon off;'
