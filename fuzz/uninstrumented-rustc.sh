#!/usr/bin/env bash
# rustc wrapper for the fuzz workspace (fuzz/.cargo/config.toml): compiles third-party
# cryptography crates without libFuzzer's coverage instrumentation and without debug
# assertions; everything else goes to rustc unchanged.
#
# Why: `ike_state` spent about half its time inside X25519 (curve25519-dalek), where
# every field multiplication ran instrumented comparisons and limb-bound debug asserts.
# Coverage inside constant-time cryptography gives the fuzzer no signal (it has no
# data-dependent branches to find), and those asserts check the library, not esplab.
# Our crates (esplab-*) keep full instrumentation and `-a` debug assertions.
set -euo pipefail
rustc="$1"
shift
crate=""
prev=""
for a in "$@"; do
    [ "$prev" = "--crate-name" ] && crate="$a"
    prev="$a"
done
case "$crate" in
curve25519_dalek | x25519_dalek | aes | aes_gcm | ghash | polyval | ctr | cbc | cipher | \
    sha2 | hmac | digest | universal_hash | block_buffer | crypto_common | chacha20 | \
    rand_chacha | rand_core | subtle | zeroize) ;;
*) exec "$rustc" "$@" ;;
esac
drop() {
    case "$1" in
    passes=sancov-module | llvm-args=-sanitizer-coverage* | debug-assertions* | overflow-checks*)
        return 0
        ;;
    esac
    return 1
}
out=()
while [ $# -gt 0 ]; do
    a="$1"
    shift
    if [ "$a" = "-C" ] && [ $# -gt 0 ]; then
        if drop "$1"; then
            shift
            continue
        fi
        out+=("$a" "$1")
        shift
        continue
    fi
    case "$a" in
    -C*) drop "${a#-C}" && continue ;;
    esac
    out+=("$a")
done
exec "$rustc" "${out[@]}" -Cdebug-assertions=off -Coverflow-checks=off
