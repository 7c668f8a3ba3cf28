#!/usr/bin/env bash
# End-to-end throughput over TUN (`just bench-e2e`, root): iperf3 through
#
#   bare        the veth pair alone, no tunnel
#   esplab      esplab peer <-> esplab peer (manual SAs, AES-GCM-128, UDP 4500 or raw ESP)
#   strongswan  charon + kernel-libipsec <-> the same (IKEv2 PSK, aes128gcm16, UDP 4500)
#
# one after another in the same run, each measured with iperf3 TCP (1 stream, then 4
# streams) and UDP (1400-byte IP packets at the highest loss-free rate, a short bisection),
# then a table of Gbit/s and ratios, for esplab the CPU each daemon used during the TCP
# 1-stream test (100% = one core) and the ESP packets per system call over its run (A's
# sends, B's receives: the batching at work), and for every configuration the share of the whole
# machine's CPU time left idle during that test (near 0% = the machine, not the tunnel, is
# the limit). Results: docs/PERFORMANCE.md ("End to end over TUN").
#
# Topology (two namespaces created here, both veth ends inside them):
#
#   A: veth 198.18.0.1/24, lo 198.19.1.1/32 ==veth== B: veth 198.18.0.2/24, lo 198.19.2.1/32
#
# The tunnels carry 198.19.1.1 <-> 198.19.2.1 (TUN MTU 1400 on both); "bare" runs iperf3
# to 198.18.0.2 straight over the veth pair (MTU 1500).
#
# Environment:
#   DURATION=S     seconds per TCP test (default 10; DURATION=3 for a quick run)
#   UDP_DURATION=S seconds per UDP probe (default 2)
#   UDP_STEPS=N    bisection steps of the UDP search (default 6)
#   LOSS_PCT=P     highest loss still counted as loss-free, in percent (default 0)
#   ONLY="a b"     configurations to run, of: bare esplab strongswan (default all three);
#                  also esplab@SWITCHES (esplab with ESPLAB_DATAPATH=SWITCHES, e.g.
#                  esplab@no-tun-offload,no-batch: what each datapath optimisation gives;
#                  esplab@tx-thread: TUN -> ESP on a thread of its own)
#                  and esplab-old (the binary in $ESPLAB_OLD, e.g. a build of an older commit)
#                  and esplab+KEY=VALUE (esplab with `KEY = VALUE` in both configs' [capture]
#                  table, e.g. esplab+ring=0: no flight recorder; esplab+snaplen=96; or in
#                  their [tun] table with tun.KEY, e.g. esplab+tun.tx_queue_len=500)
#   BIDIR=1        also TCP 1 stream each way at once (iperf3 --bidir; both directions'
#                  sum): every daemon then encrypts and decrypts at full rate
#   UDP_CPU_RATE=R also UDP at the fixed rate R (iperf3 -b, e.g. 800M) for DURATION seconds,
#                  reporting the esplab daemons' CPU during it and the loss: the cost of the
#                  UDP path where the loss-free search only finds its ceiling
#   ENCAP=esp      esplab peers send raw ESP (IP protocol 50) instead of ESP in UDP 4500
#                  (default udp; strongSwan always uses UDP 4500 here)
#   ESPLAB=PATH    the esplab binary (default: build target/release/esplab)
#   KEEP=1         keep the state directory (configs, logs, iperf3 JSON) afterwards
#
# Installs nothing: missing tools are reported with the apt-get line that provides them.
# Needs root (namespaces, TUN devices).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=${DURATION:-10}
BIDIR=${BIDIR:-0}
UDP_DURATION=${UDP_DURATION:-2}
UDP_STEPS=${UDP_STEPS:-6}
LOSS_PCT=${LOSS_PCT:-0}
ONLY=${ONLY:-bare esplab strongswan}
ENCAP=${ENCAP:-udp}
PKT=1400 # UDP test: IP packet size (iperf3 payload = PKT - 28)

die() { echo "bench-e2e: $*" >&2; exit 1; }
say() { echo "bench-e2e: $*" >&2; }
[[ $ENCAP == udp || $ENCAP == esp ]] || die "ENCAP must be udp or esp, not $ENCAP"

# ---- prerequisites (checked, never installed) ----
[[ $(id -u) == 0 ]] || die "needs root (network namespaces, TUN devices)"
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v jq >/dev/null || missing+=(jq)
command -v ping >/dev/null || missing+=(iputils-ping) # the tunnel check before each configuration
if [[ " $ONLY " == *" strongswan "* ]]; then
    command -v swanctl >/dev/null || missing+=(strongswan-swanctl)
    [[ -x /usr/lib/ipsec/charon ]] || missing+=(strongswan-charon)
    ls /usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so >/dev/null 2>&1 ||
        missing+=(libcharon-extra-plugins)
    ls /usr/lib/ipsec/plugins/libstrongswan-gcm.so >/dev/null 2>&1 ||
        missing+=(libstrongswan-standard-plugins)
fi
if ((${#missing[@]})); then
    die "missing: ${missing[*]}
  install with: apt-get install -y --no-install-recommends ${missing[*]}
  (or run only some configurations: ONLY=\"bare esplab\")"
fi

if [[ " $ONLY " == *" esplab"* ]]; then
    if [[ -n ${ESPLAB:-} ]]; then
        [[ -x $ESPLAB ]] || die "ESPLAB=$ESPLAB is not an executable"
    else
        say "building esplab (cargo build --release --bin esplab)"
        (cd "$root" && cargo build --release --bin esplab >&2)
        ESPLAB=$root/target/release/esplab
    fi
fi

# ---- lab: unique names per run, torn down on any exit ----
id=$$
NS_A=ebe2e-a-$id
NS_B=ebe2e-b-$id
VA=ebe$((id % 100000))a
VB=ebe$((id % 100000))b
STATE=$(mktemp -d /tmp/esplab-bench-e2e.XXXXXX)
PIDS=()      # processes started here, stopped by PID
A_UL=198.18.0.1 B_UL=198.18.0.2
A_IN=198.19.1.1 B_IN=198.19.2.1

stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    ip netns del "$NS_A" 2>/dev/null || true
    ip netns del "$NS_B" 2>/dev/null || true
    if [[ ${KEEP:-0} == 1 ]]; then say "state kept in $STATE"; else rm -rf "$STATE"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add "$VA" netns "$NS_A" type veth peer name "$VB" netns "$NS_B"
ip -n "$NS_A" addr add "$A_UL/24" dev "$VA"
ip -n "$NS_B" addr add "$B_UL/24" dev "$VB"
ip -n "$NS_A" addr add "$A_IN/32" dev lo
ip -n "$NS_B" addr add "$B_IN/32" dev lo
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set "$VA" up
ip -n "$NS_B" link set "$VB" up

# One iperf3 server in B for every test.
ip netns exec "$NS_B" iperf3 -s -p 5201 >"$STATE/iperf3-server.log" 2>&1 &
PIDS+=($!)

# Polls `cmd...` for up to $1 seconds.
wait_for() {
    local t=$1
    shift
    for _ in $(seq $((t * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}
wait_for 10 ip netns exec "$NS_A" bash -c "exec 3<>/dev/tcp/$B_UL/5201" || die "iperf3 server did not come up"

# ---- measurements ----
# iperf3 from A to $1, source $2; prints the JSON file name.
run_iperf() {
    local dst=$1 src=$2 tag=$3
    shift 3
    local out="$STATE/$tag.json"
    local tries=0
    # The single server answers one test at a time: retry while it is still busy with the
    # previous one ("the server is busy").
    until ip netns exec "$NS_A" iperf3 -c "$dst" -B "$src" -p 5201 -J "$@" >"$out" 2>"$out.err"; do
        tries=$((tries + 1))
        ((tries < 5)) || { say "iperf3 $tag failed: $(jq -r '.error // empty' "$out" 2>/dev/null)"; return 1; }
        sleep 1
    done
    echo "$out"
}

gbps() { awk -v b="$1" 'BEGIN { printf "%.3f", b / 1e9 }'; }

tcp_test() {
    local name=$1 dst=$2 src=$3 streams=$4 f
    f=$(run_iperf "$dst" "$src" "$name-tcp$streams" -t "$DURATION" -P "$streams" -O 1) || { echo 0; return; }
    jq -r '.end.sum_received.bits_per_second' "$f"
}

# TCP, one stream each way at once; prints both directions' sum.
tcp_bidir() {
    local name=$1 dst=$2 src=$3 f
    f=$(run_iperf "$dst" "$src" "$name-bidir" -t "$DURATION" --bidir -O 1) || { echo 0; return; }
    jq -r '.end.sum_received.bits_per_second + .end.sum_received_bidir_reverse.bits_per_second' "$f"
}

# The kernel's drop counters in namespace $1, one "name=value" per line: each interface's
# tx/rx_dropped (a TUN device's tx_dropped: packets its reader, the tunnel daemon, did not
# take in time; rx_dropped: packets the daemon wrote that the stack refused), the UDP MIB
# (/proc/net/snmp: RcvbufErrors, SndbufErrors, InErrors) and each UDP socket's drops by
# local port (/proc/net/udp: 4500 the tunnel, 5201 iperf3).
drop_counters() {
    ip netns exec "$1" bash -c '
        for d in /sys/class/net/*; do
            echo "${d##*/}.tx_dropped=$(<"$d/statistics/tx_dropped")"
            echo "${d##*/}.rx_dropped=$(<"$d/statistics/rx_dropped")"
        done
        awk '\''/^Udp:/ { if (!h) { for (i = 2; i <= NF; i++) k[i] = $i; h = 1 }
                          else for (i = 2; i <= NF; i++) print "udp." k[i] "=" $i }'\'' /proc/net/snmp
        while read -r _ local _ _ _ _ _ _ _ _ _ _ drops; do
            [[ $local == *:* ]] || continue
            echo "udp:$((16#${local##*:})).drops=$drops"
        done < <(tail -n +2 /proc/net/udp)' 2>/dev/null || true
}

# Which counters of both namespaces grew between two drop_counters snapshots ($1: before,
# $2: after, "NS:name=value" lines); prints "NS:name+delta ..." or "none".
drop_delta() {
    awk -F= 'NR == FNR { a[$1] = $2; next }
             $1 ~ /(dropped|Errors|drops)$/ && ($2 - a[$1]) > 0 { printf "%s+%d ", $1, $2 - a[$1]; n++ }
             END { if (!n) printf "none" }' <(echo "$1") <(echo "$2")
}

both_drop_counters() {
    drop_counters "$NS_A" | sed 's/^/A:/'
    drop_counters "$NS_B" | sed 's/^/B:/'
}

# One UDP probe at $4 bit/s; prints "received_bps lost_percent"; after a lossy probe,
# tells on stderr which kernel drop counters grew meanwhile (where the datagrams went).
udp_probe() {
    local name=$1 dst=$2 src=$3 rate=$4 f before
    before=$(both_drop_counters)
    f=$(run_iperf "$dst" "$src" "$name-udp-$rate" -u -l $((PKT - 28)) -w 4M -b "$rate" -t "$UDP_DURATION") ||
        { echo "0 100"; return; }
    if ! lossfree "$(jq -r '.end.sum.lost_percent' "$f")"; then
        say "  udp $name: kernel drops during the probe: $(drop_delta "$before" "$(both_drop_counters)")"
    fi
    jq -r '[(.end.sum.bits_per_second * (100 - .end.sum.lost_percent) / 100), .end.sum.lost_percent] | @tsv' "$f"
}

lossfree() { awk -v l="$1" -v m="$LOSS_PCT" 'BEGIN { exit !(l <= m) }'; }

# Highest loss-free offered rate: bisection between 0 and twice the TCP result (iperf3
# cannot offer much more than that from one thread anyway). Prints the received bit/s at it.
udp_search() {
    local name=$1 dst=$2 src=$3 hint=$4
    local lo=0 hi best=0 mid r
    hi=$(awk -v h="$hint" 'BEGIN { printf "%d", (h > 1e8 ? h : 1e8) * 2 }')
    read -r r l < <(udp_probe "$name" "$dst" "$src" "$hi")
    say "  udp $name: offered $(gbps "$hi") Gbit/s, lost $l%"
    if lossfree "$l"; then echo "$r"; return; fi
    for _ in $(seq "$UDP_STEPS"); do
        mid=$(((lo + hi) / 2))
        read -r r l < <(udp_probe "$name" "$dst" "$src" "$mid")
        say "  udp $name: offered $(gbps "$mid") Gbit/s, lost $l%"
        if lossfree "$l"; then lo=$mid; best=$r; else hi=$mid; fi
    done
    echo "$best"
}

# CPU time (user + system, clock ticks) of process $1: what a daemon used.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# All CPUs' ticks and their idle + iowait ticks, from the first line of /proc/stat.
machine_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $5 + $6; exit }' /proc/stat; }
CPU_PIDS=()  # the daemons whose CPU use the TCP 1-stream test reports (esplab only)
HZ=$(getconf CLK_TCK)

# The daemons' CPU from `cpu_start` to `cpu_since`, "A% B%" (100% = one core).
cpu_start() {
    local p
    CPU_BEFORE=()
    for p in "${CPU_PIDS[@]}"; do CPU_BEFORE+=("$(cpu_ticks "$p")"); done
    CPU_T0=$(date +%s.%N)
}
cpu_since() {
    local i cpu="" t
    t=$(awk -v x="$CPU_T0" -v y="$(date +%s.%N)" 'BEGIN { print y - x }')
    for i in "${!CPU_PIDS[@]}"; do
        cpu+=$(awk -v a="${CPU_BEFORE[$i]}" -v b="$(cpu_ticks "${CPU_PIDS[$i]}")" -v hz="$HZ" \
            -v t="$t" 'BEGIN { printf "%.0f%% ", 100 * (b - a) / hz / t }')
    done
    echo "${cpu% }"
}

declare -A RES
measure() {
    local name=$1 dst=$2 src=$3
    say "$name: TCP 1 stream, ${DURATION}s"
    local m0 m1 cpu f
    cpu_start
    m0=$(machine_ticks)
    RES[$name,tcp1]=$(tcp_test "$name" "$dst" "$src" 1)
    cpu=$(cpu_since)
    m1=$(machine_ticks)
    # Includes iperf3's 1 s of omitted warm-up (-O 1) and its start and stop.
    RES[$name,idle1]=$(awk -v a="$m0" -v b="$m1" 'BEGIN { split(a, x, " "); split(b, y, " ");
        t = y[1] - x[1]; printf "%.0f%%", (t > 0 ? 100 * (y[2] - x[2]) / t : 0) }')
    say "$name: machine CPU idle during TCP 1 stream: ${RES[$name,idle1]}"
    RES[$name,cpu1]=$cpu
    [[ -n $cpu ]] && say "$name: CPU of the daemons (A B) during TCP 1 stream: $cpu"
    say "$name: TCP 4 streams, ${DURATION}s"
    RES[$name,tcp4]=$(tcp_test "$name" "$dst" "$src" 4)
    if ((BIDIR)); then
        say "$name: TCP 1 stream each way, ${DURATION}s"
        RES[$name,bidir]=$(tcp_bidir "$name" "$dst" "$src")
    fi
    if [[ -n ${UDP_CPU_RATE:-} && ${#CPU_PIDS[@]} -gt 0 ]]; then
        say "$name: UDP ${PKT} B at $UDP_CPU_RATE bit/s, ${DURATION}s"
        cpu_start
        if f=$(run_iperf "$dst" "$src" "$name-udpcpu" -u -l $((PKT - 28)) -w 4M -b "$UDP_CPU_RATE" -t "$DURATION"); then
            cpu=$(cpu_since)
            RES[$name,udpcpu]="$cpu (lost $(jq -r '.end.sum.lost_percent | . * 100 | round / 100' "$f")%)"
            say "$name: CPU of the daemons (A B) during UDP at $UDP_CPU_RATE: ${RES[$name,udpcpu]}"
        fi
    fi
    say "$name: UDP ${PKT} B, searching the highest loss-free rate"
    RES[$name,udp]=$(udp_search "$name" "$dst" "$src" "${RES[$name,tcp1]}")
    say "$name: tcp1 $(gbps "${RES[$name,tcp1]}") tcp4 $(gbps "${RES[$name,tcp4]}") udp $(gbps "${RES[$name,udp]}")${RES[$name,bidir]:+ bidir $(gbps "${RES[$name,bidir]}")} Gbit/s"
}

# Waits until A reaches B's inner address through the tunnel.
tunnel_ping() {
    wait_for "$1" ip netns exec "$NS_A" ping -c 1 -W 1 -I "$A_IN" "$B_IN" ||
        die "no traffic through the $2 tunnel (logs in $STATE; KEEP=1 keeps them)"
}

# ---- bare veth ----
run_bare() { measure bare "$B_UL" "$A_UL"; }

# ---- esplab <-> esplab ----
esplab_config() {
    local me=$1 local=$2 peer=$3 lnet=$4 rnet=$5 out_key=$6 in_key=$7 out_spi=$8 in_spi=$9
    local capture=${10:-} tunkey=""
    if [[ $capture == tun.* ]]; then tunkey=${capture#tun.}; capture=""; fi
    cat >"$STATE/esplab-$me.toml" <<CONF
name = "$me"

[underlay]
local = "$local"
encap = "$ENCAP"
port = 4500

[tun]
name = "ebt$((id % 100000))$me"
mtu = 1400
${tunkey%%=*}${tunkey:+ = }${tunkey#*=}

[control]
socket = "$STATE/esplab-$me.sock"

[log]
file = "$STATE/esplab-$me.log"

[capture]
${capture%%=*}${capture:+ = }${capture#*=}

[[peer]]
name = "peer"
address = "$peer"
local_ts = ["$lnet"]
remote_ts = ["$rnet"]

[[peer.sa]]
direction = "out"
spi = "$out_spi"
alg = "aes-gcm-128"
key = "$out_key"

[[peer.sa]]
direction = "in"
spi = "$in_spi"
alg = "aes-gcm-128"
key = "$in_key"
CONF
}

# Packets per underlay system call over an esplab run, from the daemons' counters: A's
# sends (OUT_PACKETS / UNDERLAY_TX_CALLS) and B's receives (IN_PACKETS / UNDERLAY_RX_CALLS),
# "A-tx B-rx"; "-" from a binary without those counters.
esplab_calls() {
    local bin=$1 a b
    a=$("$bin" show counters --all --config "$STATE/esplab-a.toml" 2>/dev/null) || true
    b=$("$bin" show counters --all --config "$STATE/esplab-b.toml" 2>/dev/null) || true
    per_call() {
        awk -v p="$2" -v c="$3" '$1 == p { n = $2 } $1 == c { k = $2 }
            END { if (k > 0) printf "%.1f", n / k; else printf "-" }' <<<"$1"
    }
    echo "$(per_call "$a" OUT_PACKETS UNDERLAY_TX_CALLS) $(per_call "$b" IN_PACKETS UNDERLAY_RX_CALLS)"
}

# run_esplab NAME BINARY SWITCHES [CAPTURE_KEY=VALUE]
run_esplab() {
    local name=$1 bin=$2 switches=$3 capture=${4:-}
    # Fixed benchmark keys (never use them for anything real).
    local kab=a0a1a2a3a4a5a6a7a8a9aaabacadaeafc0c1c2c3 kba=b0b1b2b3b4b5b6b7b8b9babbbcbdbebfd0d1d2d3
    esplab_config a "$A_UL" "$B_UL" "$A_IN/32" "$B_IN/32" $kab $kba 0xe2e00001 0xe2e00002 "$capture"
    esplab_config b "$B_UL" "$A_UL" "$B_IN/32" "$A_IN/32" $kba $kab 0xe2e00002 0xe2e00001 "$capture"
    local pa pb
    ip netns exec "$NS_A" env ESPLAB_DATAPATH="$switches" "$bin" peer --config "$STATE/esplab-a.toml" \
        >"$STATE/$name-a.out" 2>&1 &
    pa=$!
    PIDS+=("$pa")
    ip netns exec "$NS_B" env ESPLAB_DATAPATH="$switches" "$bin" peer --config "$STATE/esplab-b.toml" \
        >"$STATE/$name-b.out" 2>&1 &
    pb=$!
    PIDS+=("$pb")
    tunnel_ping 20 "$name"
    CPU_PIDS=("$pa" "$pb")
    measure "$name" "$B_IN" "$A_IN"
    CPU_PIDS=()
    RES[$name,calls]=$(esplab_calls "$bin")
    say "$name: ESP packets per system call over the run (A sends, B receives): ${RES[$name,calls]}"
    stop_pid "$pa"
    stop_pid "$pb"
}

# ---- strongSwan (kernel-libipsec) <-> strongSwan ----
charon_start() {
    local me=$1 ns=$2 local=$3 remote=$4 lnet=$5 rnet=$6 lid=$7 rid=$8 action=$9
    local dir="$STATE/charon-$me"
    mkdir -p "$dir/run"
    cat >"$dir/strongswan.conf" <<CONF
charon {
    # kernel-libipsec first: it must own the IPsec interface (its TUN device is ipsec0).
    load = random nonce openssl aes sha1 sha2 hmac gcm curve25519 kdf kernel-libipsec kernel-netlink socket-default vici
    port = 500
    port_nat_t = 4500
    install_routes = yes
    syslog { daemon { default = -1 } }
    filelog { main { path = $dir/charon.log
                     default = 1 } }
    plugins {
        vici { socket = unix://$dir/charon.vici }
    }
}
CONF
    cat >"$dir/swanctl.conf" <<CONF
connections {
    bench {
        version = 2
        local_addrs = $local
        remote_addrs = $remote
        proposals = aes128gcm16-prfsha256-x25519
        encap = yes
        mobike = no
        local { auth = psk
                id = $lid }
        remote { auth = psk
                 id = $rid }
        children {
            net {
                mode = tunnel
                local_ts = $lnet
                remote_ts = $rnet
                esp_proposals = aes128gcm16
                start_action = $action
            }
        }
    }
}
secrets {
    ike-bench {
        id-a = a.bench.test
        id-b = b.bench.test
        secret = "esplab-bench-e2e-psk-$id"
    }
}
CONF
    # charon writes /run/charon.pid: give it its own /run in the private mount namespace
    # that `ip netns exec` creates for it.
    ip netns exec "$ns" env STRONGSWAN_CONF="$dir/strongswan.conf" \
        sh -c 'mount --bind "$1/run" /run && exec /usr/lib/ipsec/charon' sh "$dir" \
        </dev/null >"$dir/charon.out" 2>&1 &
    PIDS+=($!)
    echo $! >"$dir/pid"
    wait_for 10 test -S "$dir/charon.vici" || die "charon $me did not come up (see $dir)"
    swanctl --load-all --file "$dir/swanctl.conf" --noprompt --uri "unix://$dir/charon.vici" \
        >"$dir/swanctl.out" 2>&1 || die "swanctl --load-all failed: $(cat "$dir/swanctl.out")"
}

run_strongswan() {
    charon_start b "$NS_B" "$B_UL" "$A_UL" "$B_IN/32" "$A_IN/32" b.bench.test a.bench.test none
    charon_start a "$NS_A" "$A_UL" "$B_UL" "$A_IN/32" "$B_IN/32" a.bench.test b.bench.test start
    tunnel_ping 30 strongSwan
    measure strongswan "$B_IN" "$A_IN"
    stop_pid "$(cat "$STATE/charon-a/pid")"
    stop_pid "$(cat "$STATE/charon-b/pid")"
}

# An esplab configuration named again in ONLY (interleaved rounds, e.g. ONLY="esplab
# esplab@no-udp-gro esplab esplab@no-udp-gro") is reported as NAME#2, NAME#3, ...
declare -A SEEN
RUNS=()
for c in $ONLY; do
    SEEN[$c]=$((${SEEN[$c]:-0} + 1))
    run=$c
    ((SEEN[$c] == 1)) || run="$c#${SEEN[$c]}"
    RUNS+=("$run")
    case $c in
    bare) run_bare ;;
    esplab) run_esplab "$run" "$ESPLAB" "" ;;
    esplab@*) run_esplab "$run" "$ESPLAB" "${c#esplab@}" ;;
    esplab+*=*) run_esplab "$run" "$ESPLAB" "" "${c#esplab+}" ;;
    esplab-old)
        [[ -x ${ESPLAB_OLD:-} ]] || die "esplab-old needs ESPLAB_OLD=PATH to an esplab binary"
        run_esplab "$run" "$ESPLAB_OLD" ""
        ;;
    strongswan) run_strongswan ;;
    *) die "unknown configuration $c (bare, esplab, strongswan)" ;;
    esac
done

# ---- report ----
echo
echo "End to end over TUN: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, TCP ${DURATION}s, UDP ${PKT} B packets (loss <= ${LOSS_PCT}%)"
printf '%-40s %10s %10s %12s %10s %10s %11s  %s\n' config "tcp-1 Gb/s" "tcp-4 Gb/s" "udp-lf Gb/s" "bidir Gb/s" "idle tcp-1" "pkts/call" "CPU A B (tcp-1)${UDP_CPU_RATE:+; (udp $UDP_CPU_RATE)}"
for c in "${RUNS[@]}"; do
    printf '%-40s %10s %10s %12s %10s %10s %11s  %s\n' "$c" "$(gbps "${RES[$c,tcp1]}")" "$(gbps "${RES[$c,tcp4]}")" \
        "$(gbps "${RES[$c,udp]}")" "$( [[ -n ${RES[$c,bidir]:-} ]] && gbps "${RES[$c,bidir]}" || echo -)" \
        "${RES[$c,idle1]:-}" "${RES[$c,calls]:-}" "${RES[$c,cpu1]:-}${RES[$c,udpcpu]:+; ${RES[$c,udpcpu]}}"
done
ratio() {
    local a=$1 b=$2
    for k in tcp1 tcp4 udp; do
        awk -v x="${RES[$a,$k]}" -v y="${RES[$b,$k]}" \
            'BEGIN { if (y > 0) printf " %10.2fx", x / y; else printf " %10s", "-" }'
    done
    echo
}
if [[ " $ONLY " == *" esplab "* ]]; then
    echo
    printf '%-22s %11s %11s %11s\n' ratio tcp-1 tcp-4 udp-lf
    if [[ " $ONLY " == *" strongswan "* ]]; then
        printf '%-22s' "esplab / strongswan"
        ratio esplab strongswan
    fi
    if [[ " $ONLY " == *" bare "* ]]; then
        printf '%-22s' "esplab / bare"
        ratio esplab bare
    fi
fi
