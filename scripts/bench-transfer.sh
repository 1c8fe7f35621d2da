#!/usr/bin/env bash
# The /p2pvideo file-transfer benchmark, beside plain TCP (socat) and QUIC (quinn, through
# examples/quinn_transfer.rs) measured in the same run.
#
#   sudo scripts/bench-transfer.sh [SIZE_MIB] [RUNS] [SECTIONS]
#                                  (defaults: 1024 MiB, 3 runs, "rates shrink sharing")
#
# Needs root (network namespaces), iproute2, nftables, socat, ethtool and GNU time;
# installs what is missing with apt-get. Files live in /dev/shm so that the disk is not
# what is measured. Every namespace and file is removed at the end, also on failure.
#
# rates: loopback; a veth pair between two namespaces made here (clean; 1 % and 5 % random
# loss dropped by nftables in both directions; a 100 Mbit/s tbf limit, with a quarter of
# the file; jumbo frames; a chunk ceiling far above the MTU). Each figure is the median of
# RUNS runs, file to file: Confab's from the receiver's acceptance until the file is
# SHA-256 checked and in place, socat's (128 KiB blocks) from its start until the receiver
# exits. QUIC's is memory to memory (the file's size, from a buffer, read and discarded: no
# file, no SHA-256), so an upper bound for QUIC: from the receiver's accepting the stream
# until its end, with quinn's defaults (Cubic) and 64 MiB windows. Senders pinned to core
# 0, receivers to core 1; each side's CPU, from its last run (GNU time), as "CPU % / CPU
# seconds per GiB moved": the % shows whether it was the bottleneck (it counts the wait
# for the other side to start too); Cfb/QUIC is Confab's rate over QUIC's.
#
# shrink: jumbo frames on the veth, then the receiver's link drops to 1500 bytes in the
# middle of the transfer, silently: a path that shrank (Confab and QUIC; see shrink()).
#
# sharing: the 100 Mbit/s tbf shared by four transfers at once (started together, then
# 1 s apart), and by one transfer and one TCP flow (with a 50 ms and a 5 ms buffer); each
# flow's rate over the same 10 s, taken from the size of its receiver's file, and Jain's
# fairness index. The flows send the SIZE_MIB file and must not finish within those 15 s,
# so keep SIZE_MIB at 256 or more for this section.
#
# UDP segmentation offload is off on the veth pair: with it on, a GSO batch crosses the
# veth as one packet and nftables drops the whole batch at once, where TCP loses single
# segments.
set -euo pipefail
shopt -s inherit_errexit
SIZE_MIB=${1:-1024}
RUNS=${2:-3}
SECTIONS=${3:-rates shrink sharing}
cd "$(dirname "$0")/.."

missing=()
command -v nft >/dev/null || missing+=(nftables)
command -v socat >/dev/null || missing+=(socat)
command -v ethtool >/dev/null || missing+=(ethtool)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --quiet --bin confab-transfer-bench
cargo build --release --quiet --example quinn_transfer
BENCH=$PWD/target/release/confab-transfer-bench
QUIC=$PWD/target/release/examples/quinn_transfer

WORK=$(mktemp -d /dev/shm/confab-transfer-bench.XXXXXX)
cleanup() {
  ip netns del cfbA 2>/dev/null || true
  ip netns del cfbB 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
head -c $((SIZE_MIB * 1048576)) /dev/urandom >"$WORK/file.bin"
# Touch, once, as much tmpfs as the runs will hold (the files, TCP's copy, a received one):
# on a fresh VM the first write to memory the guest never used costs several times a later
# one (the first run on a new machine gave Confab's loopback row 3.2 Gbit/s, the next 7.0).
head -c $((SIZE_MIB * 1048576 * 3)) /dev/zero >"$WORK/warm" && rm "$WORK/warm"
head -c $((SIZE_MIB * 1048576 / 4)) "$WORK/file.bin" >"$WORK/quarter.bin"

# Two namespaces joined by a veth pair: A (10.77.0.1) sends, B (10.77.0.2) receives.
# make_link [MTU]
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
  ip -n cfbA link set vA mtu "${1:-1500}" up
  ip -n cfbB link set vB mtu "${1:-1500}" up
  ip netns exec cfbA ethtool -K vA tx-udp-segmentation off >/dev/null
  ip netns exec cfbB ethtool -K vB tx-udp-segmentation off >/dev/null
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
add_rate_limit() { # RATE [LATENCY]
  ip netns exec cfbA tc qdisc add dev vA root tbf rate "$1" burst 64kb latency "${2:-50ms}"
}

# run_in NS CMD...: CMD in namespace NS, or here when NS is "-".
run_in() {
  local ns=$1
  shift
  if [ "$ns" = - ]; then "$@"; else ip netns exec "$ns" "$@"; fi
}

# Prefix that writes a command's CPU % (user + system over elapsed) and its user and
# system seconds to the file after it.
TIMED=(/usr/bin/time -f '%P %U %S' -o)
# cpu FILE BYTES: "CPU%/CPU seconds per GiB" of the command timed into FILE that moved BYTES.
cpu() {
  awk -v b="$2" '{ printf "%s/%.2f", $1, ($2 + $3) * 1073741824 / b }' "$1"
}
# Senders run on core 0 and receivers on core 1, so that neither side of either system
# takes the other's core. socat moves 128 KiB per call: its default of 8 KiB makes TCP
# look several times slower under loss than it is.
SEND_CORE=(taskset -c 0)
RECV_CORE=(taskset -c 1)
SOCAT=(socat -u -b 131072)

# One Confab transfer; prints Mbit/s, then the sender's and the receiver's CPU (see cpu).
confab_once() { # NS_A NS_B ADDR_A ADDR_B FILE [CHUNK_CEILING]
  rm -rf "$WORK/recv" && mkdir "$WORK/recv"
  run_in "$2" "${RECV_CORE[@]}" "${TIMED[@]}" "$WORK/cpu.recv" "$BENCH" recv --bind "$4:47301" --from "$3:47302" \
    --expect "$5" --dir "$WORK/recv" >"$WORK/recv.out" &
  local recv=$!
  sleep 0.2
  local chunk=()
  [ -n "${6:-}" ] && chunk=(--chunk-size "$6")
  run_in "$1" "${SEND_CORE[@]}" "${TIMED[@]}" "$WORK/cpu.send" "$BENCH" send --bind "$3:47302" --to "$4:47301" \
    --file "$5" "${chunk[@]}" >"$WORK/send.out"
  wait $recv || { echo "the receiver failed" >&2; exit 1; }
  cmp -s "$5" "$WORK/recv/sender_$(basename "$5")" || { echo "corrupt" >&2; exit 1; }
  grep -o 'chunks of [0-9]* bytes' "$WORK/send.out" | awk '{ print $3 }' >"$WORK/chunk"
  local bytes
  bytes=$(stat -c %s "$5")
  echo "$(awk '{ print $7 }' "$WORK/recv.out") $(cpu "$WORK/cpu.send" "$bytes")" \
    "$(cpu "$WORK/cpu.recv" "$bytes")"
}

# One socat transfer; prints Mbit/s, then the sender's and the receiver's CPU (see cpu).
tcp_once() { # NS_A NS_B ADDR_B FILE
  rm -f "$WORK/tcp.out"
  run_in "$2" "${RECV_CORE[@]}" "${TIMED[@]}" "$WORK/cpu.recv" "${SOCAT[@]}" TCP-LISTEN:47310,reuseaddr \
    OPEN:"$WORK/tcp.out",creat,trunc &
  local recv=$!
  sleep 0.2
  local start end
  start=$(date +%s%N)
  run_in "$1" "${SEND_CORE[@]}" "${TIMED[@]}" "$WORK/cpu.send" "${SOCAT[@]}" OPEN:"$4" TCP:"$3":47310
  wait $recv
  end=$(date +%s%N)
  cmp -s "$4" "$WORK/tcp.out" || { echo "corrupt" >&2; exit 1; }
  local bytes
  bytes=$(stat -c %s "$4")
  awk -v b="$bytes" -v ns=$((end - start)) \
    'BEGIN { printf "%.1f", b * 8000 / ns }'
  echo " $(cpu "$WORK/cpu.send" "$bytes") $(cpu "$WORK/cpu.recv" "$bytes")"
}

# One QUIC transfer of BYTES bytes, memory to memory; prints Mbit/s, then the sender's and
# the receiver's CPU %. Generous timeouts: the lossy scenarios are slow, not stuck.
quic_once() { # NS_A NS_B ADDR_B BYTES
  run_in "$2" "${RECV_CORE[@]}" "${TIMED[@]}" "$WORK/cpu.recv" "$QUIC" recv --bind "$3:47320" \
    --timeout-secs 900 >"$WORK/quic.out" &
  local recv=$!
  sleep 0.2
  run_in "$1" "${SEND_CORE[@]}" "${TIMED[@]}" "$WORK/cpu.send" "$QUIC" send --to "$3:47320" \
    --bytes "$4" --timeout-secs 900 >/dev/null
  wait $recv || { echo "the QUIC receiver failed" >&2; exit 1; }
  grep -q "^bytes=$4 " "$WORK/quic.out" || { echo "QUIC: short" >&2; exit 1; }
  echo "$(sed -n 's/.* mbit=\([0-9.]*\)$/\1/p' "$WORK/quic.out") $(cpu "$WORK/cpu.send" "$4")" \
    "$(cpu "$WORK/cpu.recv" "$4")"
}

# The median of the first column, with the other columns of the last line.
median() {
  local lines
  lines=$(cat)
  echo "$(cut -d' ' -f1 <<<"$lines" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')" \
    "$(tail -n1 <<<"$lines" | cut -d' ' -f2-)"
}

scenario() { # NAME NS_A NS_B ADDR_A ADDR_B FILE [CHUNK_CEILING]
  local name=$1 tcp quic confab bytes
  tcp=$(for _ in $(seq "$RUNS"); do tcp_once "$2" "$3" "$5" "$6"; done | median)
  bytes=$(stat -c %s "$6")
  quic=$(for _ in $(seq "$RUNS"); do quic_once "$2" "$3" "$5" "$bytes"; done | median)
  confab=$(for _ in $(seq "$RUNS"); do confab_once "$2" "$3" "$4" "$5" "$6" "${7:-}"; done |
    median)
  read -r tcp_rate tcp_send tcp_recv <<<"$tcp"
  read -r quic_rate quic_send quic_recv <<<"$quic"
  read -r confab_rate confab_send confab_recv <<<"$confab"
  printf "%-30s %9s %11s %11s %9s %11s %11s %9s %11s %11s %7s %8s\n" "$name" \
    "$tcp_rate" "$tcp_send" "$tcp_recv" "$quic_rate" "$quic_send" "$quic_recv" \
    "$confab_rate" "$confab_send" "$confab_recv" "$(cat "$WORK/chunk")" \
    "$(awk -v c="$confab_rate" -v q="$quic_rate" 'BEGIN { printf "%.2f", c / q }')"
}

rates() {
  echo "Mbit/s: medians of $RUNS runs of $SIZE_MIB MiB (a quarter at 100 Mbit/s); the sender's"
  echo "and the receiver's CPU % / CPU seconds per GiB in the last run; Confab's chunk size"
  echo "reached; QUIC memory to memory (an upper bound), the others file to file; Confab's"
  echo "rate over QUIC's"
  printf "%-30s %9s %11s %11s %9s %11s %11s %9s %11s %11s %7s %8s\n" scenario TCP send recv \
    QUIC send recv Confab send recv chunk Cfb/QUIC
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
  make_link 9000
  scenario "veth, MTU 9000" cfbA cfbB 10.77.0.1 10.77.0.2 "$WORK/file.bin"
  make_link
  scenario "veth, --chunk-size 65000" cfbA cfbB 10.77.0.1 10.77.0.2 "$WORK/file.bin" 65000
}

# shrink: jumbo frames on the veth, then, 0.5 s after the receiver starts (about 0.3 s into
# the transfer), the receiver's link drops to MTU 1500. The veth drops every larger frame
# without a word, as a path whose route changed does: a black hole. Confab and QUIC only:
# kernel TCP keeps the MSS it agreed at connection time and, without tcp_mtu_probing,
# resends its 8,948-byte segments until it gives up.
shrink() {
  echo "Jumbo frames, then MTU 1500 about 0.3 s into the transfer: Mbit/s, medians of $RUNS"
  echo "runs of $SIZE_MIB MiB; CPU as in rates; Confab's chunk size at the end, its black holes"
  printf "%-30s %9s %11s %11s %9s %11s %11s %7s %6s\n" scenario QUIC send recv Confab send recv \
    chunk holes
  local bytes quic confab
  bytes=$(stat -c %s "$WORK/file.bin")
  shrink_later() { (sleep 0.5 && ip -n cfbB link set vB mtu 1500) & }
  quic=$(for _ in $(seq "$RUNS"); do
    make_link 9000 && shrink_later && quic_once cfbA cfbB 10.77.0.2 "$bytes" && wait
  done | median)
  confab=$(for _ in $(seq "$RUNS"); do
    make_link 9000 && shrink_later && confab_once cfbA cfbB 10.77.0.1 10.77.0.2 "$WORK/file.bin" &&
      wait
  done | median)
  read -r quic_rate quic_send quic_recv <<<"$quic"
  read -r confab_rate confab_send confab_recv <<<"$confab"
  printf "%-30s %9s %11s %11s %9s %11s %11s %7s %6s\n" "veth, MTU 9000 -> 1500" \
    "$quic_rate" "$quic_send" "$quic_recv" "$confab_rate" "$confab_send" "$confab_recv" \
    "$(cat "$WORK/chunk")" "$(grep -o '[0-9]* black holes' "$WORK/send.out" | awk '{ print $1 }')"
}

# bytes_of FILE_GLOB: the size of the one file it names, 0 if none yet.
bytes_of() {
  local f
  for f in $1; do
    [ -e "$f" ] && { stat -c %s "$f"; return; }
  done
  echo 0
}

# window_rates GLOB...: each file's growth over 10 s after 5 s, in Mbit/s, one per line.
window_rates() {
  sleep 5
  local before=() f
  for f in "$@"; do before+=("$(bytes_of "$f")"); done
  sleep 10
  local i=0
  for f in "$@"; do
    echo $((($(bytes_of "$f") - before[i]) * 8 / 10000000))
    i=$((i + 1))
  done
}

jain() { awk '{ s += $1; q += $1 * $1; n++ } END { printf "%.3f", s * s / (n * q) }'; }

# N Confab transfers through the tbf at once, STAGGER seconds apart.
share_confab() { # N STAGGER
  make_link
  add_rate_limit 100mbit
  local pids=() globs=() k
  for k in $(seq 0 $(($1 - 1))); do
    mkdir -p "$WORK/share$k"
    ip netns exec cfbB "$BENCH" --token "00112233445566778899aabbccddee0$k" recv \
      --bind "10.77.0.2:$((47301 + k))" --from "10.77.0.1:$((47401 + k))" \
      --expect "$WORK/file.bin" --dir "$WORK/share$k" >/dev/null &
    pids+=($!)
    globs+=("$WORK/share$k/.*.part")
  done
  sleep 0.2
  for k in $(seq 0 $(($1 - 1))); do
    ip netns exec cfbA "$BENCH" --token "00112233445566778899aabbccddee0$k" send \
      --bind "10.77.0.1:$((47401 + k))" --to "10.77.0.2:$((47301 + k))" \
      --file "$WORK/file.bin" >/dev/null &
    pids+=($!)
    sleep "$2"
  done
  local rates
  rates=$(window_rates "${globs[@]}")
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  printf "%-30s %s   Jain %s\n" "$1 transfers, ${2} s apart" "$(echo $rates)" \
    "$(echo "$rates" | jain)"
  rm -rf "$WORK"/share*
}

# One Confab transfer and one TCP flow through the tbf with a LATENCY buffer; FIRST starts
# one second before the other.
versus_tcp() { # LATENCY FIRST
  make_link
  add_rate_limit 100mbit "$1"
  mkdir -p "$WORK/vs"
  ip netns exec cfbB "${SOCAT[@]}" TCP-LISTEN:47310,reuseaddr OPEN:"$WORK/vs/tcp.out",creat &
  local pids=($!)
  ip netns exec cfbB "$BENCH" recv --bind 10.77.0.2:47301 --from 10.77.0.1:47401 \
    --expect "$WORK/file.bin" --dir "$WORK/vs" >/dev/null &
  pids+=($!)
  sleep 0.2
  local order=(tcp confab)
  [ "$2" = confab ] && order=(confab tcp)
  for who in "${order[@]}"; do
    if [ "$who" = tcp ]; then
      ip netns exec cfbA "${SOCAT[@]}" OPEN:"$WORK/file.bin" TCP:10.77.0.2:47310 2>/dev/null &
    else
      ip netns exec cfbA "$BENCH" send --bind 10.77.0.1:47401 --to 10.77.0.2:47301 \
        --file "$WORK/file.bin" >/dev/null &
    fi
    pids+=($!)
    sleep 1
  done
  local rates
  rates=$(window_rates "$WORK/vs/tcp.out" "$WORK/vs/.*.part")
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  read -r -d '' tcp confab <<<"$rates" || true
  printf "%-30s TCP %s, Confab %s\n" "vs TCP, $1 buffer, $2 first" "$tcp" "$confab"
  rm -rf "$WORK/vs"
}

sharing() {
  echo "100 Mbit/s tbf shared: each flow's Mbit/s over the same 10 s"
  share_confab 4 0
  share_confab 4 1
  versus_tcp 50ms tcp
  versus_tcp 50ms confab
  versus_tcp 5ms tcp
  versus_tcp 5ms confab
}

for section in $SECTIONS; do
  "$section"
  echo
done
