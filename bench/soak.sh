#!/usr/bin/env bash
# The durability soak (not a CI test): KILLS random SIGKILLs of `apl serve` while eight raters
# label as fast as they can, then every acknowledged label must be stored exactly once and
# SQLite's integrity_check ok. On SQLite, and on PostgreSQL when DATABASE (a postgres:// URL
# whose user may create databases) is given.
#   bash bench/soak.sh [KILLS]            (default 200)
#   DATABASE=postgres://postgres:pw@127.0.0.1/postgres bash bench/soak.sh 200
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS="${1:-200}"
run() {
  APL_SOAK_KILLS="$KILLS" cargo test -p apl-server --test durability soak_many_sigkills \
    -- --ignored --nocapture 2>&1 | grep -E "soak:|kills,|panicked|test result"
}
echo "SQLite, $KILLS kills:"
run
if [ -n "${DATABASE:-}" ]; then
  echo "PostgreSQL, $KILLS kills:"
  APL_SOAK_DATABASE="$DATABASE" run
fi
