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
pairs_file "$pairs" Prompt >"$work/pairs.jsonl"
api --data-binary @"$work/pairs.jsonl" "$base/api/projects/$project/pairs?format=trl&rate=true" >/dev/null
for i in $(seq "$conns"); do
  api -H 'content-type: application/json' -d "{\"name\":\"rater$i\"}" "$base/api/projects/$project/raters" \
    | sed 's/.*"token":"\([^"]*\)".*/\1/'
  echo
done >"$work/tokens"
echo "apl serve on $base: $(nproc) cores, ${DATABASE:-SQLite}, $pairs pairs, $conns raters, ${secs}s"
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
RATER_TOKENS="$work/tokens" wrk -t "$conns" -c "$conns" -d "${secs}s" --latency -s bench/label.lua "$base"
if [ -n "${IMPORT:-}" ]; then
  running=""; kill -0 "$importer" 2>/dev/null && running=" (still running when wrk stopped: measure longer)"
  wait "$importer"
  echo "$(cat "$work/import.log")$running"
fi
