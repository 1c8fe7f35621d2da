#!/usr/bin/env bash
# The /p2pvideo file-transfer benchmark, beside plain TCP (socat) measured in the same run.
#
#   sudo scripts/bench-transfer.sh [SIZE_MIB] [RUNS]      (defaults: 1024 MiB, 3 runs)
#
# Needs root (network namespaces), iproute2, nftables and socat; installs the last two with
# apt-get when missing. Files live in /dev/shm so that the disk is not what is measured.
# Scenarios: loopback; a veth pair between two namespaces made here (clean, 1 % and 5 %
# random loss dropped by nftables in both directions, and a 100 Mbit/s tbf limit, with a
# quarter of the file); every namespace and file is removed at the end. Each figure is the
# median of RUNS runs, file to file: Confab's from the receiver's acceptance until the file
# is SHA-256 checked and in place, socat's from its start until the receiver exits.
set -euo pipefail
shopt -s inherit_errexit
SIZE_MIB=${1:-1024}
RUNS=${2:-3}
cd "$(dirname "$0")/.."

missing=()
command -v nft >/dev/null || missing+=(nftables)
command -v socat >/dev/null || missing+=(socat)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --quiet --bin confab-transfer-bench
BENCH=$PWD/target/release/confab-transfer-bench

WORK=$(mktemp -d /dev/shm/confab-transfer-bench.XXXXXX)
cleanup() {
  ip netns del cfbA 2>/dev/null || true
  ip netns del cfbB 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
head -c $((SIZE_MIB * 1048576)) /dev/urandom >"$WORK/file.bin"
head -c $((SIZE_MIB * 1048576 / 4)) "$WORK/file.bin" >"$WORK/quarter.bin"

# Two namespaces joined by a veth pair: A (10.77.0.1) sends, B (10.77.0.2) receives.
make_link() {
  cleanup_ns
  ip netns add cfbA
  ip netns add cfbB
  ip link add vA netns cfbA type veth peer name vB netns cfbB
  ip -n cfbA addr add 10.77.0.1/24 dev vA
  ip -n cfbB addr add 10.77.0.2/24 dev vB
  for ns in cfbA cfbB; do
    ip -n $ns link set lo up
  done
  ip -n cfbA link set vA up
  ip -n cfbB link set vB up
}
cleanup_ns() {
  ip netns del cfbA 2>/dev/null || true
  ip netns del cfbB 2>/dev/null || true
}
# Drops PERMILLE/1000 of the datagrams and segments arriving in each namespace.
add_loss() {
  for ns in cfbA cfbB; do
    ip netns exec $ns nft -f - <<EOF
table inet loss {
  chain input {
    type filter hook input priority 0; policy accept;
    numgen random mod 1000 < $1 drop
  }
}
EOF
  done
}
add_rate_limit() {
  ip netns exec cfbA tc qdisc add dev vA root tbf rate "$1" burst 64kb latency 50ms
}

# run_in NS CMD...: CMD in namespace NS, or here when NS is "-".
run_in() {
  local ns=$1
  shift
  if [ "$ns" = - ]; then "$@"; else ip netns exec "$ns" "$@"; fi
}

# One Confab transfer; prints Mbit/s.
confab_once() { # NS_A NS_B ADDR_A ADDR_B FILE
  rm -rf "$WORK/recv" && mkdir "$WORK/recv"
  run_in "$2" "$BENCH" recv --bind "$4:47301" --from "$3:47302" --expect "$5" \
    --dir "$WORK/recv" >"$WORK/recv.out" &
  local recv=$!
  sleep 0.2
  run_in "$1" "$BENCH" send --bind "$3:47302" --to "$4:47301" --file "$5" >/dev/null
  wait $recv || { echo "the receiver failed" >&2; exit 1; }
  cmp -s "$5" "$WORK/recv/sender_$(basename "$5")" || { echo "corrupt" >&2; exit 1; }
  awk '{ print $7 }' "$WORK/recv.out"
}

# One socat transfer; prints Mbit/s.
tcp_once() { # NS_A NS_B ADDR_B FILE
  rm -f "$WORK/tcp.out"
  run_in "$2" socat -u TCP-LISTEN:47310,reuseaddr OPEN:"$WORK/tcp.out",creat,trunc &
  local recv=$!
  sleep 0.2
  local start end
  start=$(date +%s%N)
  run_in "$1" socat -u OPEN:"$4" TCP:"$3":47310
  wait $recv
  end=$(date +%s%N)
  cmp -s "$4" "$WORK/tcp.out" || { echo "corrupt" >&2; exit 1; }
  local bytes
  bytes=$(stat -c %s "$4")
  awk -v b="$bytes" -v ns=$((end - start)) 'BEGIN { printf "%.1f\n", b * 8000 / ns }'
}

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

scenario() { # NAME NS_A NS_B ADDR_A ADDR_B FILE
  local name=$1 tcp confab
  tcp=$(for _ in $(seq "$RUNS"); do tcp_once "$2" "$3" "$5" "$6"; done | median)
  confab=$(for _ in $(seq "$RUNS"); do confab_once "$2" "$3" "$4" "$5" "$6"; done | median)
  printf "%-22s %10s %10s   (Mbit/s, median of %s, %s MiB)\n" "$name" "$tcp" "$confab" \
    "$RUNS" $(($(stat -c %s "$6") / 1048576))
}

printf "%-22s %10s %10s\n" scenario "TCP" "Confab"
scenario loopback - - 127.0.0.1 127.0.0.1 "$WORK/file.bin"
make_link
scenario "veth" cfbA cfbB 10.77.0.1 10.77.0.2 "$WORK/file.bin"
add_loss 10
scenario "veth, 1% loss" cfbA cfbB 10.77.0.1 10.77.0.2 "$WORK/file.bin"
make_link
add_loss 50
scenario "veth, 5% loss" cfbA cfbB 10.77.0.1 10.77.0.2 "$WORK/file.bin"
make_link
add_rate_limit 100mbit
scenario "veth, tbf 100 Mbit/s" cfbA cfbB 10.77.0.1 10.77.0.2 "$WORK/quarter.bin"
