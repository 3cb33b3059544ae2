#!/usr/bin/env bash
# Load benchmark of label submissions (not a test): starts the release `apl serve` on loopback
# over a fresh SQLite file (or DATABASE, e.g. a postgres:// URL) with the tiny fixture model,
# imports PAIRS pairs, creates one rater per connection, and drives them with wrk (Debian's
# `wrk`): each rater asks for a pair and labels it, as fast as the server answers.
#
#   bash bench/load.sh [CONNECTIONS=8] [SECONDS=20]
#   PAIRS=10000 bash bench/load.sh          # pool size (default 60000)
#   IMPORT=300000 bash bench/load.sh 8 60   # a TRL import of that many rows into another
#                                           # project starts 2 s in, while the raters label
#   PAIRS=1000000 SEED=sql bash bench/load.sh  # the pool written by the database's own client
#                                           # (sqlite3 or psql) instead of the import API
#   ROUND_TRIPS=2 bash bench/load.sh        # raters ask for each pair apart (POST /rate/next,
#                                           # then the label); the default is the browser's
#                                           # way, a label that brings the next pair
#
# Prints labels/s and the latency percentiles wrk measured (with IMPORT, also how long the
# import took and whether it ended inside the measured window).
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-8}
secs=${2:-20}
pairs=${PAIRS:-60000}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
cargo build --release -q -p apl-server --bin apl
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
admin=load-bench-admin-token-0123456789
RUST_LOG=warn ./target/release/apl serve --model engine/tests/fixtures/llama --no-prompts --no-worker \
  --addr 127.0.0.1:0 --data-dir "$work" --admin-token "$admin" ${DATABASE:+--database "$DATABASE"} \
  >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 100); do grep -q "serving on" "$work/out" 2>/dev/null && break; sleep 0.1; done
base=$(grep -o 'http://[0-9.:]*' "$work/out" | head -1)
api() { curl -sf -H "Authorization: Bearer $admin" "$@"; }
new_project() {
  api -H 'content-type: application/json' -d "{\"name\":\"$1\",\"task\":\"generic\"}" "$base/api/projects" \
    | sed 's/.*"id":"\([0-9a-f]*\)".*/\1/'
}
# pairs_file N WORD: N distinct TRL rows.
pairs_file() {
  python3 -c "
import json
for i in range($1):
    print(json.dumps({'prompt': f'$2 {i}: the film', 'chosen': f'was good {i}', 'rejected': f'was bad {i}'}))
"
}
project=$(new_project load)
if [ "${SEED:-import}" = sql ]; then
  # Large pools (1M pairs take ~8 min through the import API on 2 cores): rows written straight
  # into the database by its own client, as an import would leave them (one prompt, two
  # completions, one open pair per row, one vote wanted; pair ids in hex, as label.lua reads
  # them), before the raters start. PostgreSQL's seeded tables are analysed after, as its
  # autovacuum would after an import (not the empty labels table: statistics saying it is empty
  # would make every per-pair label lookup a scan while it fills).
  seed="INSERT INTO prompts (id, project_id, text, split, source, created_at)
      WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $pairs)
      SELECT 'sp' || i, '$project', 'Prompt ' || i || ': the film', 'train', 'upload', i FROM n;
    INSERT INTO completions (id, prompt_id, text, source, created_at)
      WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $pairs)
      SELECT 's' || s.side || i, 'sp' || i, 'was ' || s.word || ' ' || i, 'import', i
      FROM n, (SELECT 'a' AS side, 'good' AS word UNION ALL SELECT 'b', 'bad') s;
    INSERT INTO pairs (id, project_id, prompt_id, completion_a, completion_b, kind, target_votes, votes, created_at)
      WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $pairs)
      SELECT 'ee' || i, '$project', 'sp' || i, 'sa' || i, 'sb' || i, 'train', 1, 0, i FROM n;"
  case "${DATABASE:-}" in
    postgres*) psql -q "$DATABASE" -c "BEGIN; $seed COMMIT; ANALYZE pairs, prompts, completions;" ;;
    *) sqlite3 "$work/apl.sqlite" "PRAGMA busy_timeout = 10000; BEGIN; $seed COMMIT;" ;;
  esac
else
  pairs_file "$pairs" Prompt >"$work/pairs.jsonl"
  api --data-binary @"$work/pairs.jsonl" "$base/api/projects/$project/pairs?format=trl&rate=true" >/dev/null
fi
for i in $(seq "$conns"); do
  api -H 'content-type: application/json' -d "{\"name\":\"rater$i\"}" "$base/api/projects/$project/raters" \
    | sed 's/.*"token":"\([^"]*\)".*/\1/'
  echo
done >"$work/tokens"
trips=${ROUND_TRIPS:-1}
echo "apl serve on $base: $(nproc) cores, ${DATABASE:-SQLite}, $pairs pairs, $conns raters, ${secs}s, $trips request(s) per label"
if [ -n "${IMPORT:-}" ]; then
  other=$(new_project import)
  pairs_file "$IMPORT" Imported >"$work/import.jsonl"
  (
    sleep 2
    t0=$(date +%s.%N)
    report=$(api --max-time 600 --data-binary @"$work/import.jsonl" "$base/api/projects/$other/pairs?format=trl" || echo failed)
    echo "import of $IMPORT rows (started 2 s in): $(echo "$(date +%s.%N) - $t0" | bc) s, $report"
  ) >"$work/import.log" &
  importer=$!
fi
LABEL_NEXT=$([ "$trips" = 2 ] && echo 0 || echo 1) RATER_TOKENS="$work/tokens" wrk -t "$conns" -c "$conns" -d "${secs}s" --latency -s bench/label.lua "$base"
if [ -n "${IMPORT:-}" ]; then
  running=""; kill -0 "$importer" 2>/dev/null && running=" (still running when wrk stopped: measure longer)"
  wait "$importer"
  echo "$(cat "$work/import.log")$running"
fi
