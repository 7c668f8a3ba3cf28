//! Fuzz target bodies for esplab. Each `targets::NAME(&[u8])` is one cargo-fuzz target
//! (`fuzz_targets/NAME.rs`) and is also driven on stable Rust by the root package's
//! `tests/fuzz_targets.rs` (which `#[path]`-includes `src/targets.rs`), so CI exercises
//! the same code without libFuzzer. A target panics only when an invariant breaks.
#![forbid(unsafe_code)]

pub mod targets;
