#!/bin/sh
# The container's start: with PACS_ADMIN_PASSWORD set and no such account yet,
# make the first administrator (pacs refuses to listen beyond loopback without
# one), then run pacs. Two replicas racing here is harmless: the second finds
# the account there and goes on.
set -e
if [ -n "${PACS_ADMIN_PASSWORD:-}" ] && [ "${1:-}" = "serve" ]; then
    printf '%s\n' "$PACS_ADMIN_PASSWORD" \
        | pacs user add "${PACS_ADMIN_USER:-admin}" --role admin --password-stdin >/dev/null 2>&1 \
        || true
fi
exec pacs "$@"
