#!/usr/bin/env bash
# Direct links through NAT and the server's relay (issue 16): how long a private chat and a
# transfer take to open, directly and relayed, and what a file transfer carries each way
# through 100 Mbit/s home links, beside plain TCP (socat) on the same links.
#
#   sudo scripts/bench-nat.sh [SIZE_MIB] [RUNS]     (defaults: 256 MiB, 3 runs)
#
# Needs root (network namespaces), iproute2, nftables, tc (tbf), socat and GNU coreutils;
# installs what is missing with apt-get. Builds the release confab and confab-server.
# Files live in /dev/shm so that the disk is not what is measured. Every namespace and file
# is removed at the end, also on failure.
#
# The lab (namespaces cfn<PID>-*), as tests/common/lab.rs builds it: a public bridge in the
# server's namespace (203.0.113.1), and four homes, each a router (wan 203.0.113.(10 + n),
# lan 10.0.n.1) with one client (10.0.n.10) behind it:
#
#   1 alice  port-restricted (masquerade, conntrack filtering)
#   2 bob    port-restricted
#   3 carol  symmetric (masquerade random)
#   4 dave   forwarded: UDP 41000 and TCP 41001 (confab's) and 41002 (socat's) to dave
#
# Unlike tests/common/lab.rs's, each router also drops what comes in on wan to its own
# address unasked, as a home router's firewall does (ROUTER_INPUT=accept leaves that out).
# Without it, the sender's first offer reaches the receiver's router before the receiver's
# punch leaves it, is taken in for the router itself, and the conntrack entry that leaves
# makes masquerade give the punch another port: port-restricted to port-restricted then
# goes relayed every time.
#
# Each home's link is 100 Mbit/s both ways: a tbf (burst 64 kb, latency 50 ms) on the
# router's wan egress (upload) and on the server side's veth towards the router (download).
# A direct transfer alice -> bob crosses alice's upload and bob's download; a relayed one
# carol -> bob crosses carol's upload and bob's download (and the server, whose own link is
# not limited), so both meet the same two limits. The relay's own caps stay at their
# defaults (100 Mbit/s a link, both ways together; 200 a user).
#
# Figures, each the median of RUNS runs, with every run printed:
# - chat open: from `/accept` written to the target's stdin until the asker prints
#   "private chat with ... is open"; directly (target dave, forwarded), directly between
#   two port-restricted NATs (alice -> bob, a TCP simultaneous open), and relayed (carol,
#   symmetric -> bob).
# - transfer open: from `/p2pvideo` written to the sender's stdin until it prints
#   "accepted ...; sending" (the receiver auto-accepts); directly (alice -> bob, hole
#   punched) and relayed (carol -> bob).
# - throughput: SIZE_MIB MiB from the sender's "accepted" line to its "uploaded" line, in
#   Mbit/s of file; the file is checked with sha256sum where it was saved. The CPU % of
#   the sender, the receiver and the server over that time (utime + stime from
#   /proc/PID/stat), and the server's CPU seconds per GiB, from /p2pvideo to the
#   receiver's line; then the receiver's CPU % over the 11 s after, while its finished
#   transfer lingers.
# - TCP anchor: socat (128 KiB blocks) alice -> dave's forwarded port, the same limits.
#
# Each client's stdout goes through a bash loop that stamps every line with
# $EPOCHREALTIME as it is read; commands go in through a FIFO, stamped as they are written.
set -euo pipefail
shopt -s inherit_errexit
SIZE_MIB=${1:-256}
RUNS=${2:-3}
cd "$(dirname "$0")/.."

missing=()
command -v nft >/dev/null || missing+=(nftables)
command -v socat >/dev/null || missing+=(socat)
command -v tc >/dev/null || missing+=(iproute2)
command -v sha256sum >/dev/null || missing+=(coreutils)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --quiet --bin confab --bin confab-server
CLIENT=$PWD/target/release/confab
SERVER=$PWD/target/release/confab-server
CREDENTIALS=$PWD/testdata/credentials.txt

P=cfn$$
NAMESPACES=()
WORK=$(mktemp -d /dev/shm/confab-nat-bench.XXXXXX)
cleanup() {
  local ns pid
  # Whatever still runs in the lab (the server, the clients) would keep its namespace.
  for ns in "${NAMESPACES[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# drop: the routers drop what comes to their own address unasked, as a home router's
# firewall does; accept: they take it (tests/common/lab.rs's routers), see docs/BENCHMARKS.md.
ROUTER_INPUT=${ROUTER_INPUT:-drop}
SERVER_IP=203.0.113.1
PORT=4000
LIMIT=(tbf rate 100mbit burst 64kb latency 50ms)

add_ns() {
  ip netns add "$1"
  NAMESPACES+=("$1")
  ip -n "$1" link set lo up
}

# add_home N NAT: router N doing NAT (restricted, symmetric, forwarded) with one client.
add_home() {
  local n=$1 router=$P-router$1 client=$P-client$1 inbound="" masquerade=masquerade input=""
  [ "$ROUTER_INPUT" = drop ] &&
    input="iifname \"wan\" ct state established,related accept
           iifname \"wan\" drop"
  add_ns "$router"
  add_ns "$client"
  ip -n "$P-server" link add "r$n" type veth peer name wan netns "$router"
  ip -n "$P-server" link set "r$n" master pub up
  ip -n "$router" addr add "203.0.113.$((10 + n))/24" dev wan
  ip -n "$router" link set wan up
  ip -n "$router" link add lan type veth peer name eth0 netns "$client"
  ip -n "$router" addr add "10.0.$n.1/24" dev lan
  ip -n "$router" link set lan up
  ip -n "$client" addr add "10.0.$n.10/24" dev eth0
  ip -n "$client" link set eth0 up
  ip -n "$client" route add default via "10.0.$n.1"
  ip netns exec "$router" sysctl -qw net.ipv4.ip_forward=1
  case $2 in
    symmetric) masquerade="masquerade random" ;;
    forwarded)
      inbound="iifname \"wan\" udp dport 41000 dnat to 10.0.$n.10
               iifname \"wan\" tcp dport { 41001, 41002 } dnat to 10.0.$n.10" ;;
  esac
  ip netns exec "$router" nft -f - <<EOF
table ip lab_nat {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    $inbound
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" $masquerade
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" accept
    ct state established,related accept
    ct status dnat accept
  }
  chain input {
    type filter hook input priority filter; policy accept;
    $input
  }
}
EOF
  ip netns exec "$router" tc qdisc add dev wan root "${LIMIT[@]}"
  ip netns exec "$P-server" tc qdisc add dev "r$n" root "${LIMIT[@]}"
}

add_ns "$P-server"
ip -n "$P-server" link add pub type bridge
ip -n "$P-server" addr add "$SERVER_IP/24" dev pub
ip -n "$P-server" link set pub up
ip netns exec "$P-server" sysctl -qew net.bridge.bridge-nf-call-iptables=0 || true
add_home 1 restricted
add_home 2 restricted
add_home 3 symmetric
add_home 4 forwarded
DAVE_PUBLIC=203.0.113.14

# Every line read from stdin, stamped with the time it was read.
stamp() {
  local line
  while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done
}

declare -A PID FD LOG
# start NAME NS ARGS...: runs ARGS in NS, its stdin from a FIFO on fd FD[NAME], its stdout
# stamped into LOG[NAME].
start() {
  local name=$1 ns=$2 fd
  shift 2
  mkfifo "$WORK/$name.in"
  exec {fd}<>"$WORK/$name.in"
  FD[$name]=$fd
  LOG[$name]=$WORK/$name.log
  : >"${LOG[$name]}"
  ip netns exec "$ns" "$@" <"$WORK/$name.in" > >(stamp >"${LOG[$name]}") 2>"$WORK/$name.err" &
  PID[$name]=$!
  disown # ended by cleanup; no "Killed" notice
}

# lines NAME: how many lines NAME has printed so far.
lines() { wc -l <"${LOG[$1]}"; }

# wait_for NAME FROM TEXT SECONDS: the first stamped line after line FROM of NAME's output
# that contains TEXT, waiting at most SECONDS; fails, showing the output, without one.
wait_for() {
  local i line
  for ((i = 0; i < $4 * 50; i++)); do
    line=$(tail -n +"$(($2 + 1))" "${LOG[$1]}" | grep -m1 -F -- "$3" || true)
    if [ -n "$line" ]; then
      echo "$line"
      return
    fi
    kill -0 "${PID[$1]}" 2>/dev/null || break
    sleep 0.02
  done
  echo "no \"$3\" from $1 within $4 s; its output:" >&2
  tail -n 20 "${LOG[$1]}" "$WORK/$1.err" >&2
  exit 1
}

# say NAME TEXT: writes TEXT to NAME's stdin; SAID_AT is when.
say() {
  SAID_AT=$EPOCHREALTIME
  printf '%s\n' "$2" >&"${FD[$1]}"
}

# ticks NAME: NAME's user + system CPU time so far, in clock ticks.
ticks() { sed 's/.*) //' "/proc/${PID[$1]}/stat" | awk '{ print $12 + $13 }'; }
HZ=$(getconf CLK_TCK)

# seconds_between T0 T1 (stamps), and Mbit/s, CPU % helpers.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
percent() { awk -v t="$1" -v s="$2" -v hz="$HZ" 'BEGIN { printf "%.0f", t / hz / s * 100 }'; }
stamp_of() { cut -d' ' -f1 <<<"$1"; }

# The median of the numbers on stdin, one a line.
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# ---------------------------------------------------------------------------------------
start server "$P-server" "$SERVER" --listen "$SERVER_IP:$PORT" --credentials "$CREDENTIALS" \
  --db "$WORK/server.db"
FINGERPRINT=$(wait_for server 0 "confab-server certificate " 30 | awk '{ print $NF }')
wait_for server 0 "listening on" 30 >/dev/null

# client NAME PASSWORD HOME [ARGS...]
client() {
  local name=$1 password=$2 home=$3
  shift 3
  mkdir -p "$WORK/$name/downloads"
  start "$name" "$P-client$home" env CONFAB_PASSWORD="$password" "$CLIENT" --plain \
    --server "$SERVER_IP:$PORT" --user "$name" --fingerprint "$FINGERPRINT" \
    --data-dir "$WORK/$name" --download-dir "$WORK/$name/downloads" --auto-accept "$@"
  wait_for "$name" 0 "logged in as $name" 30 >/dev/null
  [ "$(cat "/proc/${PID[$name]}/comm")" = confab ] || { echo "no pid for $name" >&2; exit 1; }
}
client alice wonderland 1
client bob builder 2
client carol singer 3
client dave grohl 4 --udp-port 41000 --p2p-port 41001
sleep 1 # the clients' binds to the server's UDP port (reflexive addresses)

head -c $((SIZE_MIB * 1048576)) /dev/urandom >"$WORK/clip.bin"
CLIP_SHA=$(sha256sum "$WORK/clip.bin" | cut -d' ' -f1)

echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), Linux $(uname -r)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# chat_once ASKER TARGET WAY: seconds from /accept to the asker's open line.
chat_once() {
  local asker=$1 target=$2 way=$3 from line
  from=$(lines "$target")
  say "$asker" "/startprivate $target"
  wait_for "$target" "$from" "* $asker asks for a private chat" 15 >/dev/null
  from=$(lines "$asker")
  local tfrom
  tfrom=$(lines "$target")
  say "$target" "/accept $asker"
  local t0=$SAID_AT
  line=$(wait_for "$asker" "$from" "* private chat with $target is open" 15)
  wait_for "$target" "$tfrom" "* private chat with $asker is open" 15 >/dev/null
  if [[ $line != *"$way"* ]]; then
    echo "chat $asker -> $target: expected \"$way\": $line" >&2
    echo "chat $asker -> $target: $line" >>"$WORK/wrong"
  fi
  from=$(lines "$target")
  say "$asker" "/stopprivate $target"
  wait_for "$target" "$from" "* $asker ended the private chat" 15 >/dev/null
  elapsed "$t0" "$(stamp_of "$line")"
}

# transfer_once SENDER RECEIVER WAY: prints open seconds, Mbit/s, CPU % of the sender, the
# receiver and the server, and the server's CPU seconds per GiB.
transfer_once() {
  local sender=$1 receiver=$2 way=$3 sfrom rfrom
  rm -rf "${WORK:?}/$receiver/downloads/"* "$WORK/$receiver/downloads/".[!.]* 2>/dev/null || true
  sfrom=$(lines "$sender")
  rfrom=$(lines "$receiver")
  local server0
  server0=$(ticks server)
  say "$sender" "/p2pvideo $receiver $WORK/clip.bin"
  local t0=$SAID_AT
  local accepted
  accepted=$(wait_for "$sender" "$sfrom" "$receiver accepted clip.bin; sending" 30)
  local a0=$EPOCHREALTIME s1 r1 v1
  s1=$(ticks "$sender")
  r1=$(ticks "$receiver")
  v1=$(ticks server)
  local uploaded
  uploaded=$(wait_for "$sender" "$sfrom" "clip.bin has been uploaded to $receiver" \
    $((SIZE_MIB + 60)))
  local a1=$EPOCHREALTIME s2 r2 v2
  s2=$(ticks "$sender")
  r2=$(ticks "$receiver")
  v2=$(ticks server)
  local received
  received=$(wait_for "$receiver" "$rfrom" "received clip.bin from $sender" 30)
  local server1
  server1=$(ticks server)
  if [[ $accepted != *"$way"* || $received != *"$way"* ]]; then
    echo "transfer $sender -> $receiver: expected \"$way\": $accepted / $received" >&2
    echo "transfer $sender -> $receiver: $accepted / $received" >>"$WORK/wrong"
  fi
  local saved
  saved=$(sed -n 's/.*, saved as \(.*\); it came.*/\1/p' <<<"$received")
  [ "$(sha256sum "$saved" | cut -d' ' -f1)" = "$CLIP_SHA" ] ||
    { echo "transfer $sender -> $receiver: $saved is not the file sent" >&2; exit 1; }
  # The receiver's CPU % over the 11 s after: its finished transfer lingers 10 s to
  # repeat its `Done`, and that is not supposed to cost anything. This is also the pause
  # that keeps one run's linger out of the next run's figures.
  local q0 q1 quiet0=$EPOCHREALTIME
  q0=$(ticks "$receiver")
  sleep 11
  q1=$(ticks "$receiver")
  local open secs window
  open=$(elapsed "$t0" "$(stamp_of "$accepted")")
  secs=$(elapsed "$(stamp_of "$accepted")" "$(stamp_of "$uploaded")")
  window=$(elapsed "$a0" "$a1")
  echo "$open" \
    "$(awk -v b=$((SIZE_MIB * 1048576)) -v s="$secs" 'BEGIN { printf "%.1f", b * 8 / s / 1e6 }')" \
    "$(percent $((s2 - s1)) "$window")" "$(percent $((r2 - r1)) "$window")" \
    "$(percent $((v2 - v1)) "$window")" \
    "$(awk -v t=$((server1 - server0)) -v hz="$HZ" -v mib="$SIZE_MIB" \
      'BEGIN { printf "%.2f", t / hz / (mib / 1024) }')" \
    "$(percent $((q1 - q0)) "$(elapsed "$quiet0" "$EPOCHREALTIME")")"
  rm -f "$saved"
}

# tcp_once: Mbit/s of socat alice -> dave's forwarded TCP port 41002.
tcp_once() {
  rm -f "$WORK/tcp.out"
  ip netns exec "$P-client4" timeout $((SIZE_MIB + 60)) socat -u -b 131072 \
    TCP-LISTEN:41002,reuseaddr OPEN:"$WORK/tcp.out",creat,trunc &
  local recv=$!
  sleep 0.3
  local t0=$EPOCHREALTIME
  ip netns exec "$P-client1" timeout $((SIZE_MIB + 60)) socat -u -b 131072 \
    OPEN:"$WORK/clip.bin" TCP:"$DAVE_PUBLIC":41002
  wait $recv
  local t1=$EPOCHREALTIME
  cmp -s "$WORK/clip.bin" "$WORK/tcp.out" || { echo "socat: corrupt" >&2; exit 1; }
  awk -v b=$((SIZE_MIB * 1048576)) -v s="$(elapsed "$t0" "$t1")" \
    'BEGIN { printf "%.1f\n", b * 8 / s / 1e6 }'
  rm -f "$WORK/tcp.out"
}

# What went another way than expected, one line each (the runs are in subshells).
: >"$WORK/wrong"
declare -A RESULT
run() { # KEY LABEL COMMAND...: RUNS runs of COMMAND, each printed; the lines in RESULT[KEY]
  local key=$1 label=$2 out all=""
  shift 2
  for ((i = 1; i <= RUNS; i++)); do
    out=$("$@")
    printf '%-32s run %d: %s\n' "$label" "$i" "$out"
    all+="$out"$'\n'
  done
  RESULT[$key]=$all
}
column_median() { awk -v c="$2" 'NF { print $c }' <<<"${RESULT[$1]}" | median; }

echo "chat open, s (from /accept to the asker's open line)"
run chat_direct "alice -> dave (direct)" chat_once alice dave "directly"
run chat_punched "alice -> bob (simultaneous open)" chat_once alice bob "directly"
run chat_relay "carol -> bob (relayed)" chat_once carol bob "through the server's relay"
echo
echo "transfers of $SIZE_MIB MiB: open s, Mbit/s, CPU % sender / receiver / server,"
echo "server CPU s per GiB, receiver CPU % in the 11 s after"
run xfer_direct "alice -> bob (direct)" transfer_once alice bob "directly"
run xfer_relay "carol -> bob (relayed)" transfer_once carol bob "through the server's relay"
echo
echo "socat TCP alice -> dave (forwarded port), Mbit/s"
run tcp "alice -> dave TCP" tcp_once
echo

echo "medians of $RUNS runs ($SIZE_MIB MiB), load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-28s %8s %8s\n' "" direct relayed
printf '%-28s %8s %8s\n' "chat open, s" "$(column_median chat_direct 1)" "$(column_median chat_relay 1)"
printf '%-28s %8s\n' "chat open, s, sim. open" "$(column_median chat_punched 1)"
printf '%-28s %8s %8s\n' "transfer open, s" "$(column_median xfer_direct 1)" "$(column_median xfer_relay 1)"
printf '%-28s %8s %8s\n' "transfer, Mbit/s" "$(column_median xfer_direct 2)" "$(column_median xfer_relay 2)"
printf '%-28s %8s %8s\n' "sender CPU %" "$(column_median xfer_direct 3)" "$(column_median xfer_relay 3)"
printf '%-28s %8s %8s\n' "receiver CPU %" "$(column_median xfer_direct 4)" "$(column_median xfer_relay 4)"
printf '%-28s %8s %8s\n' "server CPU %" "$(column_median xfer_direct 5)" "$(column_median xfer_relay 5)"
printf '%-28s %8s %8s\n' "server CPU s per GiB" "$(column_median xfer_direct 6)" "$(column_median xfer_relay 6)"
printf '%-28s %8s %8s\n' "receiver CPU % after" "$(column_median xfer_direct 7)" "$(column_median xfer_relay 7)"
printf '%-28s %8s\n' "socat TCP, Mbit/s" "$(column_median tcp 1)"
if [ -s "$WORK/wrong" ]; then
  echo
  echo "went another way than expected:"
  sed 's/^/  /' "$WORK/wrong"
fi
