#!/usr/bin/env bash
# How long a `confab --plain` client takes to be logged in again after its server is killed
# with SIGKILL and restarted at once on the same database and address.
#
#   scripts/reconnect-time.sh [ROUNDS]      (default 5; builds the debug binaries first)
#
# The time is from the restarted server's spawn until the client prints "reconnected"; it
# is mostly the reconnect backoff (the first try waits 0.25-0.5 s, then 0.5-1 s...).
set -euo pipefail
ROUNDS=${1:-5}
cd "$(dirname "$0")/.."
cargo build -q --bin confab --bin confab-server
bin=target/debug
dir=$(mktemp -d)
addr=127.0.0.1:$((40000 + RANDOM % 20000))
server=""
client=""
cleanup() {
  [ -n "$client" ] && kill "$client" 2>/dev/null || true
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
start_server() {
  "$bin/confab-server" --listen "$addr" --db "$dir/db" --credentials testdata/credentials.txt \
    >/dev/null 2>&1 &
  server=$!
}
start_server
sleep 1
# stdin stays open (a fifo this script holds) so that the client does not log out.
mkfifo "$dir/in"
exec 3<>"$dir/in"
CONFAB_PASSWORD=builder "$bin/confab" --plain --data-dir "$dir" --server "$addr" --user bob <"$dir/in" \
  >"$dir/out" 2>&1 &
client=$!
until grep -q "logged in as bob" "$dir/out"; do sleep 0.01; done
for round in $(seq "$ROUNDS"); do
  before=$(grep -c reconnected "$dir/out" || true)
  kill -9 "$server"
  wait "$server" 2>/dev/null || true
  start=$(date +%s.%N)
  start_server
  while [ "$(grep -c reconnected "$dir/out" || true)" -le "$before" ]; do sleep 0.01; done
  end=$(date +%s.%N)
  echo "round $round: logged in again $(echo "$end - $start" | bc) s after the restart"
  sleep 0.5
done
