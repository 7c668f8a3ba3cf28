#!/usr/bin/env bash
# strongSwan (charon + kernel-libipsec) as an IKEv2 interop peer for tests/ike_interop.rs.
#
#   charon.sh start DIR NS LOCAL REMOTE LOCAL_NET REMOTE_NET IKE_PROP ESP_PROP START(yes|no)
#   charon.sh stop DIR             stop the charon whose PID is in DIR/charon.pid
#   charon.sh swanctl DIR ARGS...  swanctl against that charon's vici socket
#
# $CLOSE_ACTION (default none) is the CHILD SA's close_action (recovery tests use start);
# $DPD_DELAY (default 0s = off) the connection's dpd_delay, $DPD_ACTION (default clear) the
# CHILD SA's dpd_action.
# Identities: charon is "sw.esplab.test", its peer "esplab.esplab.test"; PSK from $PSK.
# kernel-libipsec only does UDP-encapsulated ESP (encap = yes makes it explicit; charon
# fakes NAT detection so the peer agrees). charon hard-codes /run/charon.pid, so /run is
# bind-mounted over with DIR/run inside the namespace's private mount namespace.
set -euo pipefail

cmd=${1:?command}
shift
case $cmd in
start)
    dir=$1 ns=$2 local=$3 remote=$4 lnet=$5 rnet=$6 ike=$7 esp=$8 start=$9
    mkdir -p "$dir/run"
    if [[ $start == yes ]]; then action=start; else action=none; fi
    cat >"$dir/strongswan.conf" <<CONF
charon {
    # kernel-libipsec before kernel-netlink: it must own the IPsec (SA/policy) interface.
    load = random nonce openssl aes sha1 sha2 hmac gcm curve25519 kdf kernel-libipsec kernel-netlink socket-default vici updown
    port = 500
    port_nat_t = 4500
    install_routes = yes
    retransmit_tries = 2
    retransmit_timeout = 1
    retransmit_base = 1.5
    syslog { daemon { default = -1 } }
    filelog {
        main {
            path = $dir/charon.log
            time_format = %H:%M:%S
            time_add_ms = yes
            flush_line = yes
            default = 1
            ike = 2
        }
    }
    plugins {
        vici { socket = unix://$dir/charon.vici }
        kernel-libipsec { allow_peer_ts = no }
    }
}
CONF
    cat >"$dir/swanctl.conf" <<CONF
connections {
    lab {
        version = 2
        local_addrs = $local
        remote_addrs = $remote
        proposals = $ike
        encap = yes
        mobike = no
        dpd_delay = ${DPD_DELAY:-0s}
        local { auth = psk
                id = sw.esplab.test }
        remote { auth = psk
                 id = esplab.esplab.test }
        children {
            net {
                mode = tunnel
                local_ts = $lnet
                remote_ts = $rnet
                esp_proposals = $esp
                start_action = $action
                close_action = ${CLOSE_ACTION:-none}
                dpd_action = ${DPD_ACTION:-clear}
            }
        }
    }
}
secrets {
    ike-lab {
        id-a = sw.esplab.test
        id-b = esplab.esplab.test
        secret = "${PSK:?PSK}"
    }
}
CONF
    rm -f "$dir/charon.vici"
    ip netns exec "$ns" env STRONGSWAN_CONF="$dir/strongswan.conf" \
        sh -c 'mount --bind "$1/run" /run && exec /usr/lib/ipsec/charon' sh "$dir" \
        </dev/null >>"$dir/charon.out" 2>&1 &
    echo $! >"$dir/charon.pid"
    for _ in $(seq 100); do
        [[ -S $dir/charon.vici ]] && break
        kill -0 "$(cat "$dir/charon.pid")" 2>/dev/null || { cat "$dir/charon.out" >&2; exit 1; }
        sleep 0.1
    done
    [[ -S $dir/charon.vici ]] || { echo "charon did not come up" >&2; exit 1; }
    swanctl --load-all --file "$dir/swanctl.conf" --noprompt --uri "unix://$dir/charon.vici" >/dev/null
    ;;
stop)
    dir=$1
    [[ -f $dir/charon.pid ]] || exit 0
    pid=$(cat "$dir/charon.pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$dir/charon.pid" "$dir/charon.vici"
    ;;
swanctl)
    dir=$1
    shift
    exec swanctl "$@" --uri "unix://$dir/charon.vici"
    ;;
*)
    echo "usage: $0 start|stop|swanctl ..." >&2
    exit 2
    ;;
esac
