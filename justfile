# esplab task runner. `just` lists the recipes.

default:
    @just --list

# Build the release binary.
build:
    cargo build --release

# The whole test suite (what the README tells a newcomer to run).
test:
    cargo test --workspace

# What CI runs: formatting, lints, tests.
ci: fmt-check lint test

# Format the code.
fmt:
    cargo fmt --all

# Check formatting without changing files.
fmt-check:
    cargo fmt --all -- --check

# Clippy on everything, warnings are errors.
lint:
    cargo clippy --workspace --all-targets -- -D warnings

# Criterion benchmarks (AEAD backends, decap/encap, SAD lookup, invalid-SPI drop path, IKE
# handshake). Results: docs/PERFORMANCE.md, docs/sad.md.
bench *ARGS:
    cargo bench --bench aead --bench sad --bench drop --bench ike -- {{ARGS}}

# Decrypt an ESP packet from the test vectors (a quick demo of the packet tool).
demo-esp:
    cargo run --release -- esp decrypt \
      --sa spi=0xc0de086c,alg=aes-gcm-128,key=c69d16455327789af9a9161ac6b3985d5123f20b \
      --hex 4500008c0001000040328e08c0000201c6336402c0de086c00000001d3010de559dab3a4d63a3305c9fc2d316601aec094340bd4e0d7b0643c9dd9b88c210d248714dcab133f8080060d679a9c20eafe1948a0613ddea679a18049bfe229c7453677a4322e354fd00b61647e6d99f7e2cce0d8e84616fe936e2452900636b2ea9ed53b0746e8f8b1080053d0

# Instructions per operation of the hot paths under callgrind (stable on a noisy machine).
bench-icount:
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release --example icount
    bin=target/release/examples/icount
    ins() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 \
            | sed -n 's/.*Collected : *\([0-9]*\).*/\1/p'; }
    n=20000
    printf '%-26s %14s\n' path instructions/op
    for p in lookup-hit lookup-miss lookup-batch-hit lookup-batch-miss \
             floor-vec floor-min floor-word floor-flat sad-batch-map \
             drop-unknown-spi drop-unknown-spi-batch drop-one-flow \
             drop-unknown-spi-drained agent-unknown-spi-peer agent-unknown-spi-stranger \
             decap-gcm128-64 decap-gcm128-1400 encap-node-gcm128-64 encap-tx-gcm128-64; do
        a=$(ins "$p" "$n"); b=$(ins "$p" $((2 * n)))
        awk -v p="$p" -v a="$a" -v b="$b" -v n="$n" 'BEGIN { printf "%-26s %14.1f\n", p, (b - a) / n }'
    done

# The desync lab on the simulator (no root): `just lab`, `just lab child-sa-lost`.
lab name="peer-reboot" *ARGS:
    cargo run --release -- lab run {{name}} {{ARGS}}

# iperf3 TCP 1/4 streams and loss-free UDP through the bare veth, esplab <-> esplab and
# strongSwan kernel-libipsec <-> strongSwan, one after another. DURATION=3 for a quick run.
# End to end over TUN, needs root (results: docs/PERFORMANCE.md).
bench-e2e:
    scripts/bench-e2e.sh

# Fuzz each cargo-fuzz target (fuzz/, or only TARGETS) for SECS seconds, one after another,
# then print executions per target (record them in docs/RELIABILITY.md). Stable Rust acts
# as nightly for cargo-fuzz's -Z flags through RUSTC_BOOTSTRAP=1; `just fuzz 600 ike_state`.
fuzz secs="60" *targets="":
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz
    export RUSTC_BOOTSTRAP=1
    flags="-O -a --sanitizer none"
    targets="{{targets}}"
    [ -n "$targets" ] || targets=$(cargo fuzz list)
    cargo fuzz build $flags
    for t in $targets; do
        mkdir -p "corpus/$t" "artifacts/$t"
        cargo fuzz run $flags "$t" "corpus/$t" "seeds/$t" -- -jobs=1 -workers=1 \
            -max_total_time={{secs}} -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="artifacts/$t/" >/dev/null 2>&1 || true
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' fuzz-0.log | tail -1)
        crashes=$(find "artifacts/$t" -type f | wc -l)
        mv fuzz-0.log "target/fuzz-$t.log"
        printf '%-14s %12s executions  %s artifacts\n' "$t" "${runs:-?}" "$crashes"
    done
