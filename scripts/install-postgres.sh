#!/usr/bin/env bash
# PostgreSQL server (Debian packages) for the OMOP database test (tests/test_omop.py),
# which starts its own server in a temporary folder. Best effort: without root or apt the
# test skips with a message; `leader prepare omop --db` itself needs only a client driver.
set -u
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) \
    >/dev/null 2>&1 || echo "install-postgres: could not install postgresql; the PostgreSQL test will skip"
else
  echo "install-postgres: not root or no apt-get; the PostgreSQL test will skip"
fi
exit 0
