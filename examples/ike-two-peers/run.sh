#!/usr/bin/env bash
# The IKE two-peers lab: examples/two-peers/run.sh with this directory's a.toml / b.toml
# (IKEv2 PSK instead of manual SAs), in its own namespaces and state directory so it can
# run next to the manual-SA lab.
#
#   run.sh up | status | restart a|b | down      (same commands as examples/two-peers/run.sh)
#
#   ip netns exec esplab-ia ping -c 3 198.19.2.1
#   esplab show ike --socket /run/esplab/ike-a.sock
#
# Environment: as examples/two-peers/run.sh, with these defaults:
#   NS_A=esplab-ia NS_B=esplab-ib STATE=/tmp/esplab-ike-two-peers SOCKDIR=/run/esplab/ike
# and, to watch rekeys, CHILD_LIFETIME=20s REKEY_MARGIN=5s (put into both configs).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
export NS_A=${NS_A:-esplab-ia} NS_B=${NS_B:-esplab-ib}
export STATE=${STATE:-/tmp/esplab-ike-two-peers}
export SOCKDIR=${SOCKDIR:-/run/esplab/ike}
if [[ -z ${ESPLAB:-} ]]; then
    for b in "$root/target/release/esplab" "$root/target/debug/esplab"; do
        [[ -x $b ]] && { export ESPLAB=$b; break; }
    done
fi
# The two-peers script reads its configs next to itself: give it a directory holding a
# copy of it and this lab's configs.
script="$STATE-script"
mkdir -p "$script" "$SOCKDIR"
cp "$root/examples/two-peers/run.sh" "$script/run.sh"
for p in a b; do
    sed -e "s/^child_lifetime = .*/child_lifetime = \"${CHILD_LIFETIME:-20m}\"/" \
        -e "s/^rekey_margin = .*/rekey_margin = \"${REKEY_MARGIN:-2m}\"/" \
        "$here/$p.toml" >"$script/$p.toml"
done
exec bash "$script/run.sh" "$@"
