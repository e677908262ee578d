#!/usr/bin/env bash
# Run once by the postgres image when it initialises a new cluster (/docker-entrypoint-initdb.d/):
# the stanza, so archive_command succeeds from the first segment on.
set -euo pipefail
pgbackrest --stanza=poscal stanza-create
