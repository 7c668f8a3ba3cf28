//! cargo-fuzz entry point; the body is `esplab_fuzz::targets::config` (also run on stable by
//! tests/fuzz_targets.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| esplab_fuzz::targets::config(data));
