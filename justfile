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

# Criterion benchmarks (AEAD backends, decap, SAD lookup). Results: docs/PERFORMANCE.md.
bench *ARGS:
    cargo bench --bench aead --bench sad -- {{ARGS}}

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
    printf '%-20s %14s\n' path instructions/op
    for p in lookup-hit lookup-miss drop-unknown-spi decap-gcm128-64 decap-gcm128-1400; do
        a=$(ins "$p" "$n"); b=$(ins "$p" $((2 * n)))
        awk -v p="$p" -v a="$a" -v b="$b" -v n="$n" 'BEGIN { printf "%-20s %14.1f\n", p, (b - a) / n }'
    done

# The desync lab on the simulator (no root): `just lab`, `just lab child-sa-lost`.
lab name="peer-reboot" *ARGS:
    cargo run --release -- lab run {{name}} {{ARGS}}
