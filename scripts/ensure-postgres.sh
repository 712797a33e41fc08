#!/usr/bin/env bash
# Start the machine's PostgreSQL when it is down, then make the test database.
set -euo pipefail
ready() { pg_isready -q -h 127.0.0.1 -p 5432; }
if ! ready; then
  echo "PostgreSQL is down: starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
  for _ in $(seq 1 60); do ready && break; sleep 0.5; done
fi
ready || { echo "PostgreSQL did not start" >&2; exit 1; }
db=$(python3 -c "import os,urllib.parse as u; print(u.urlsplit(os.environ.get('LEDGER_TEST_PG','postgresql://postgres@127.0.0.1:5432/ledger_test')).path.lstrip('/'))")
if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" postgres | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE \"$db\"" postgres
fi
