#!/usr/bin/env bash
# Two esplab peers in two network namespaces, joined by a veth pair (the "underlay").
#
#   run.sh up       create namespaces esplab-a / esplab-b, start `esplab peer` in each
#   run.sh status   show the processes, namespaces and SAs
#   run.sh restart a|b  stop one peer (by PID) and start it again with the same config
#                   (a restarted peer has forgotten every SA's state: fresh counters and
#                   replay windows, like a rebooted router)
#   run.sh down     stop the peers (by PID) and delete the namespaces
#
#   ip netns exec esplab-a ping -c 3 198.19.2.1     # A's 198.19.1.1 -> B's 198.19.2.1
#   esplab show sa --socket /run/esplab/a.sock
#
# Environment:
#   ESPLAB=PATH   the esplab binary (default: target/release/esplab, else target/debug/esplab)
#   ENCAP=udp|esp underlay encapsulation: UDP 4500 (RFC 3948, default) or raw ESP (protocol 50)
#   FAMILY=4|6    underlay family: 198.18.0.1-2/24 (default) or 2001:2::1-2/64
#   STATE=DIR     configs, logs, PID files (default /tmp/esplab-two-peers)
#   NS_A=NAME NS_B=NAME  the namespaces (default esplab-a, esplab-b)
#   SOCKDIR=DIR   where the control sockets go (default /run/esplab: a.sock, b.sock)
# Give every lab its own NS_A, NS_B, STATE and SOCKDIR to run several at once (the tests
# in tests/peer_netns.rs do); pass the same values to `down`, `status` and `restart`.
#
# Addresses: underlay 198.18.0.0/15 or 2001:2::/48 (benchmarking ranges, RFC 2544 / RFC 5180);
# protected networks 198.19.1.0/24 (A, 198.19.1.1 on its loopback) and 198.19.2.0/24 (B).
# Needs root (namespaces, TUN devices, raw sockets).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
STATE=${STATE:-/tmp/esplab-two-peers}
ENCAP=${ENCAP:-udp}
FAMILY=${FAMILY:-4}
NS_A=${NS_A:-esplab-a}
NS_B=${NS_B:-esplab-b}
SOCKDIR=${SOCKDIR:-/run/esplab}

die() { echo "run.sh: $*" >&2; exit 1; }

ns_exists() { ip netns list | awk '{print $1}' | grep -qx -- "$1"; }

esplab_bin() {
    if [[ -n ${ESPLAB:-} ]]; then
        [[ -x $ESPLAB ]] || die "ESPLAB=$ESPLAB is not an executable"
        echo "$ESPLAB"
    elif [[ -x $root/target/release/esplab ]]; then
        echo "$root/target/release/esplab"
    elif [[ -x $root/target/debug/esplab ]]; then
        echo "$root/target/debug/esplab"
    else
        die "no esplab binary: run 'cargo build --release --bin esplab' or set ESPLAB"
    fi
}

underlay_addrs() {
    case $FAMILY in
        4) echo "198.18.0.1 198.18.0.2 24" ;;
        6) echo "2001:2::1 2001:2::2 64" ;;
        *) die "FAMILY must be 4 or 6, not $FAMILY" ;;
    esac
}

# Writes $STATE/X.toml from examples/two-peers/X.toml with this run's underlay settings.
gen_config() {
    local peer=$1 ua ub len
    read -r ua ub len < <(underlay_addrs)
    case $ENCAP in udp | esp) ;; *) die "ENCAP must be udp or esp, not $ENCAP" ;; esac
    sed -e "s/\"198\.18\.0\.1\"/\"$ua\"/" \
        -e "s/\"198\.18\.0\.2\"/\"$ub\"/" \
        -e "s/^encap = \"udp\"/encap = \"$ENCAP\"/" \
        -e "s|^socket = \"/run/esplab/|socket = \"$SOCKDIR/|" \
        "$here/$peer.toml" >"$STATE/$peer.toml"
    printf '\n[log]\nevents_file = "%s"\n' "$STATE/$peer-events.jsonl" >>"$STATE/$peer.toml"
}

# The control socket of peer $1: from this run's config once `up` wrote it.
socket_of() {
    local f="$STATE/$1.toml"
    [[ -f $f ]] || f="$here/$1.toml"
    sed -n 's/^socket = "\(.*\)"/\1/p' "$f"
}

# True when PID file $1 names a live `esplab ... peer --config` process (never trust a bare
# PID: it may have been reused since).
pid_alive() {
    local pidfile=$1 pid
    [[ -f $pidfile ]] || return 1
    pid=$(cat "$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "peer --config $STATE/" || return 1
}

# Starts peer $1 in namespace $2; its log is appended to $STATE/$1.log.
start_peer() {
    local peer=$1 ns=$2 bin=$3
    ip netns exec "$ns" "$bin" peer --config "$STATE/$peer.toml" \
        >>"$STATE/$peer.log" 2>&1 </dev/null &
    # `ip netns exec` execs the command, so this is the daemon's own PID.
    echo $! >"$STATE/$peer.pid"
}

# True when the process of PID file $1 has exited. (Not `! pid_alive`: right after the
# fork its command line is still the shell's.)
peer_gone() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    [[ -e /proc/$pid ]] || return 0
    grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# Waits (at most 10 s) until peers "$@" answer on their control sockets; false if one died
# or never came up.
wait_up() {
    local peer ok
    for _ in $(seq 100); do
        ok=1
        for peer in "$@"; do
            peer_gone "$STATE/$peer.pid" && return 1
            [[ -S $(socket_of "$peer") ]] || ok=0
        done
        [[ $ok = 1 ]] && return 0
        sleep 0.1
    done
    return 1
}

cmd_up() {
    local bin ua ub len
    bin=$(esplab_bin)
    read -r ua ub len < <(underlay_addrs)
    for ns in $NS_A $NS_B; do
        if ns_exists "$ns"; then
            die "namespace $ns exists already: run '$0 down' first"
        fi
    done
    mkdir -p "$STATE"
    rm -f "$STATE/a.log" "$STATE/b.log"
    gen_config a
    gen_config b

    ip netns add $NS_A
    ip netns add $NS_B
    # No IPv6 duplicate address detection on the new links: the daemons bind their underlay
    # address at once, and a tentative link-local address delays the first neighbour lookup.
    for ns in $NS_A $NS_B; do
        ip netns exec "$ns" sh -c 'echo 0 >/proc/sys/net/ipv6/conf/default/accept_dad' 2>/dev/null || true
    done
    ip link add esplab-va netns $NS_A type veth peer name esplab-vb netns $NS_B
    ip -n $NS_A addr add "$ua/$len" dev esplab-va
    ip -n $NS_B addr add "$ub/$len" dev esplab-vb
    ip -n $NS_A addr add 198.19.1.1/32 dev lo
    ip -n $NS_B addr add 198.19.2.1/32 dev lo
    for ns in $NS_A $NS_B; do ip -n "$ns" link set lo up; done
    ip -n $NS_A link set esplab-va up
    ip -n $NS_B link set esplab-vb up
    # Wait for the veth carrier on both ends, so a first ping is not lost to a link that
    # is still coming up (the first neighbour solicitation would go unanswered for 1 s).
    for _ in $(seq 50); do
        ip -n $NS_A -o link show esplab-va | grep -q 'state UP' &&
            ip -n $NS_B -o link show esplab-vb | grep -q 'state UP' && break
        sleep 0.1
    done

    start_peer a $NS_A "$bin"
    start_peer b $NS_B "$bin"

    local sa sb
    sa=$(socket_of a)
    sb=$(socket_of b)
    if ! wait_up a b; then
        echo "run.sh: a peer did not come up; its log:" >&2
        tail -n 5 "$STATE/a.log" "$STATE/b.log" >&2 || true
        echo "run.sh: clean up with '$0 down'" >&2
        exit 1
    fi
    echo "up: underlay IPv$FAMILY $ua <-> $ub, encap $ENCAP; peers a (pid $(cat "$STATE/a.pid")) and b (pid $(cat "$STATE/b.pid"))"
    echo "    try: ip netns exec $NS_A ping -c 3 198.19.2.1"
    echo "         $bin show sa --socket $sa"
    echo "    logs and configs: $STATE"
}

stop_peer() {
    local peer=$1 pidfile="$STATE/$1.pid" pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if pid_alive "$pidfile"; then
        kill -TERM "$pid"
        for _ in $(seq 50); do
            pid_alive "$pidfile" || break
            sleep 0.1
        done
        if pid_alive "$pidfile"; then
            echo "run.sh: peer $peer (pid $pid) ignored SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid"
        fi
        echo "stopped peer $peer (pid $pid)"
    fi
    rm -f "$pidfile"
}

cmd_down() {
    stop_peer a
    stop_peer b
    for ns in $NS_A $NS_B; do
        if ns_exists "$ns"; then
            ip netns del "$ns"
            echo "deleted namespace $ns"
        fi
    done
    # A daemon that was killed hard leaves its socket file behind; nobody listens on it.
    for peer in a b; do
        local s
        s=$(socket_of $peer)
        [[ -S $s ]] && ! pid_alive "$STATE/$peer.pid" && rm -f "$s"
    done
    return 0
}

cmd_restart() {
    local peer=${1:-} ns bin
    case $peer in
        a) ns=$NS_A ;;
        b) ns=$NS_B ;;
        *) die "usage: $0 restart a|b" ;;
    esac
    bin=$(esplab_bin)
    ns_exists "$ns" || die "namespace $ns does not exist: run '$0 up' first"
    [[ -f $STATE/$peer.toml ]] || die "no $STATE/$peer.toml: run '$0 up' first"
    stop_peer "$peer"
    start_peer "$peer" "$ns" "$bin"
    if ! wait_up "$peer"; then
        echo "run.sh: peer $peer did not come up; its log:" >&2
        tail -n 5 "$STATE/$peer.log" >&2 || true
        exit 1
    fi
    echo "restarted peer $peer (pid $(cat "$STATE/$peer.pid"))"
}

cmd_status() {
    local bin=""
    bin=$(esplab_bin 2>/dev/null) || true
    for ns in $NS_A $NS_B; do
        if ns_exists "$ns"; then echo "namespace $ns: present"; else echo "namespace $ns: absent"; fi
    done
    for peer in a b; do
        if pid_alive "$STATE/$peer.pid"; then
            echo "peer $peer: running (pid $(cat "$STATE/$peer.pid")), control $(socket_of $peer)"
            if [[ -n $bin ]]; then
                "$bin" show sa --socket "$(socket_of $peer)" 2>&1 | sed 's/^/    /' || true
            fi
        else
            echo "peer $peer: not running"
        fi
    done
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    restart) cmd_restart "${2:-}" ;;
    *) echo "usage: $0 up|down|status|restart a|b   (env: ESPLAB, ENCAP=udp|esp, FAMILY=4|6, STATE, NS_A, NS_B, SOCKDIR)" >&2; exit 2 ;;
esac
