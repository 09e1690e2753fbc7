#!/bin/sh
# First start: initdb with the superuser password from POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE
# (never baked into the image); clients on the container network authenticate with SCRAM.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    pwfile="$POSTGRES_PASSWORD_FILE"
  elif [ -n "${POSTGRES_PASSWORD:-}" ]; then
    pwfile="$(mktemp)"
    printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  else
    echo "postgres: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE for the first start" >&2
    exit 1
  fi
  initdb --username=postgres --pwfile="$pwfile" --auth-local=peer --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  [ "$pwfile" = "${POSTGRES_PASSWORD_FILE:-}" ] || rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
fi
# postgres stops cleanly on SIGTERM (smart shutdown); tini forwards it.
exec postgres -c listen_addresses='*' -c unix_socket_directories=/run/postgresql "$@"
