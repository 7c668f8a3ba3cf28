//! The config and CLI rows of the bad-input catalogue (docs/RELIABILITY.md): every bad
//! config ends in a typed `ConfigError` naming the file, the line and the key, nothing
//! panics, and `esplab peer` refuses to start (exit status 2, one `esplab: FILE:LINE:
//! KEY: ...` line on stderr, no control socket, no TUN device: no state is created).

use esplab_netio::config::Config;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_esplab");

/// A valid manual-SA config; the control socket is in `dir` so a test can see that no
/// daemon came up.
fn good(dir: &Path) -> String {
    format!(
        r#"name = "badcfg"
[underlay]
local = "198.18.0.1"
encap = "udp"
[tun]
name = "esplab-bad{pid}"
mtu = 1400
[control]
socket = "{sock}"
[[peer]]
name = "b"
address = "198.18.0.2"
local_ts = ["198.19.1.0/24"]
remote_ts = ["198.19.2.0/24"]
[[peer.sa]]
direction = "out"
spi = "0xc0de0001"
alg = "aes-gcm-128"
key = "000102030405060708090a0b0c0d0e0f10111213"
[[peer.sa]]
direction = "in"
spi = "0xc0de0002"
alg = "aes-cbc-128-hmac-sha256"
key_file = "in.key"
integ_key = "000102030405060708090a0b0c0d0e0f000102030405060708090a0b0c0d0e0f"
"#,
        pid = std::process::id() % 100_000,
        sock = dir.join("ctl.sock").display()
    )
}

/// A scratch directory with the secret file `in.key` (mode 600); removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("esplab-badcfg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let key = d.join("in.key");
        std::fs::write(&key, "000102030405060708090a0b0c0d0e0f\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Parses `text` as `dir/peer.toml`; returns the error line and message.
fn parse_err(dir: &Path, text: &str) -> (usize, String) {
    let path = dir.join("peer.toml");
    let e = Config::parse(&path, text).expect_err("config accepted");
    assert_eq!(e.file, path.display().to_string());
    (e.line, e.msg)
}

/// The line (1-based) of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).expect("needle")]
        .matches('\n')
        .count()
        + 1
}

/// Runs `esplab peer --config` on `text`: it must fail with status 2 and one error line
/// starting `esplab: FILE:LINE:`, and leave no control socket behind.
fn cli_refuses(dir: &Path, text: &str, line: usize, needle: &str) {
    let path = dir.join("peer.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["peer", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("esplab: {}:{line}:", path.display());
    assert!(err.starts_with(&want), "{err}");
    assert!(err.contains(needle), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!dir.join("ctl.sock").exists(), "a daemon came up");
}

#[test]
fn the_good_config_parses() {
    let d = Dir::new("good");
    let c = Config::parse(&d.0.join("peer.toml"), &good(&d.0)).unwrap();
    assert_eq!(c.sas.len(), 2);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn missing_keys() {
    let d = Dir::new("missing");
    let g = good(&d.0);
    for (needle, key) in [
        ("local = \"198.18.0.1\"\n", "local"),
        ("address = \"198.18.0.2\"\n", "address"),
        ("direction = \"out\"\n", "direction"),
        ("alg = \"aes-gcm-128\"\n", "alg"),
    ] {
        let bad = g.replacen(needle, "", 1);
        let (line, msg) = parse_err(&d.0, &bad);
        assert!(msg.contains("missing") && msg.contains(key), "{key}: {msg}");
        assert!(line >= 1, "{key}: line {line}");
    }
    // No key at all for an SA: neither `key` nor `key_file`.
    let bad = g.replacen(
        "key = \"000102030405060708090a0b0c0d0e0f10111213\"\n",
        "",
        1,
    );
    let (_, msg) = parse_err(&d.0, &bad);
    assert!(msg.contains("key"), "{msg}");
    let bad = g.replacen("local = \"198.18.0.1\"\n", "", 1);
    cli_refuses(&d.0, &bad, 2, "local");
}

#[test]
fn duplicate_keys() {
    let d = Dir::new("dup");
    let g = good(&d.0);
    // The same key twice in a table (TOML forbids it).
    let bad = g.replacen("mtu = 1400\n", "mtu = 1400\nmtu = 1500\n", 1);
    let (line, msg) = parse_err(&d.0, &bad);
    assert_eq!(line, line_of(&bad, "mtu = 1500"), "{msg}");
    assert!(msg.contains("duplicate"), "{msg}");
    cli_refuses(&d.0, &bad, line, "duplicate");
    // Two SAs with the same SPI in one direction.
    let bad = g.replacen("spi = \"0xc0de0002\"", "spi = \"0xc0de0001\"", 1);
    let bad = bad.replacen("direction = \"in\"", "direction = \"out\"", 1);
    let (_, msg) = parse_err(&d.0, &bad);
    assert!(msg.contains("duplicate"), "{msg}");
    // An unknown key is refused too (deny_unknown_fields), naming the key.
    let bad = g.replacen("mtu = 1400\n", "mtu = 1400\ncolour = \"red\"\n", 1);
    let (line, msg) = parse_err(&d.0, &bad);
    assert_eq!(line, line_of(&bad, "colour"));
    assert!(msg.contains("colour"), "{msg}");
}

#[test]
fn bad_addresses() {
    let d = Dir::new("addr");
    let g = good(&d.0);
    for (from, to, key) in [
        (
            "local = \"198.18.0.1\"",
            "local = \"198.18.0\"",
            "underlay.local",
        ),
        (
            "local = \"198.18.0.1\"",
            "local = \"not-an-address\"",
            "underlay.local",
        ),
        (
            "address = \"198.18.0.2\"",
            "address = \"2001:2::2\"",
            "peer[0].address",
        ),
        (
            "address = \"198.18.0.2\"",
            "address = \"198.18.0.256\"",
            "peer[0].address",
        ),
        ("\"198.19.1.0/24\"", "\"198.19.1.0/33\"", "peer[0].local_ts"),
        ("\"198.19.2.0/24\"", "\"198.19.2.0/x\"", "peer[0].remote_ts"),
    ] {
        let bad = g.replacen(from, to, 1);
        let (line, msg) = parse_err(&d.0, &bad);
        assert!(msg.starts_with(key), "{to}: {msg}");
        assert_eq!(line, line_of(&bad, to), "{to}: {msg}");
    }
    let bad = g.replacen("local = \"198.18.0.1\"", "local = \"198.18.0\"", 1);
    cli_refuses(&d.0, &bad, 3, "underlay.local");
}

#[test]
fn bad_key_lengths_and_spis() {
    let d = Dir::new("keys");
    let g = good(&d.0);
    for (from, to, needle) in [
        (
            "key = \"000102030405060708090a0b0c0d0e0f10111213\"",
            "key = \"0001\"",
            "20 bytes",
        ),
        (
            "key = \"000102030405060708090a0b0c0d0e0f10111213\"",
            "key = \"zz\"",
            "hex",
        ),
        ("spi = \"0xc0de0001\"", "spi = \"0x7\"", "reserved"),
        ("spi = \"0xc0de0001\"", "spi = 0", "reserved"),
    ] {
        let bad = g.replacen(from, to, 1);
        let (line, msg) = parse_err(&d.0, &bad);
        assert!(msg.contains(needle), "{to}: {msg}");
        assert_eq!(line, line_of(&bad, to), "{to}: {msg}");
    }
    // A short integrity key is refused when the SA is keyed; the error names the SA's
    // `key` and points at the line of its encryption key (here `key_file`).
    let bad = g.replacen(
        "integ_key = \"000102030405060708090a0b0c0d0e0f000102030405060708090a0b0c0d0e0f\"",
        "integ_key = \"0001\"",
        1,
    );
    let (line, msg) = parse_err(&d.0, &bad);
    assert!(msg.contains("integrity key must be 32 bytes"), "{msg}");
    assert_eq!(line, line_of(&bad, "key_file"), "{msg}");
    let bad = g.replacen(
        "key = \"000102030405060708090a0b0c0d0e0f10111213\"",
        "key = \"0001\"",
        1,
    );
    let line = line_of(&bad, "key = \"0001\"");
    cli_refuses(&d.0, &bad, line, "20 bytes");
}

#[test]
fn unreadable_secret_files() {
    let d = Dir::new("secret");
    let g = good(&d.0);
    // Missing, a directory, not hex, the wrong length.
    std::fs::create_dir_all(d.0.join("a-dir")).unwrap();
    std::fs::write(d.0.join("junk.key"), "not hex at all\n").unwrap();
    std::fs::write(d.0.join("short.key"), "0001\n").unwrap();
    for (name, needle) in [
        ("missing.key", "cannot read secret file"),
        ("a-dir", "cannot read secret file"),
        ("junk.key", "hex"),
        ("short.key", "16 bytes"),
    ] {
        let to = format!("key_file = \"{name}\"");
        let bad = g.replacen("key_file = \"in.key\"", &to, 1);
        let (line, msg) = parse_err(&d.0, &bad);
        assert!(msg.contains(needle), "{name}: {msg}");
        assert!(msg.contains("key"), "{name}: {msg}");
        assert_eq!(line, line_of(&bad, &to), "{name}: {msg}");
    }
    let bad = g.replacen("key_file = \"in.key\"", "key_file = \"missing.key\"", 1);
    let line = line_of(&bad, "key_file = \"missing.key\"");
    cli_refuses(&d.0, &bad, line, "cannot read secret file");
    // A secret readable by others is accepted with a warning (not an error).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.0.join("in.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = Config::parse(&d.0.join("peer.toml"), &g).unwrap();
    assert!(
        c.warnings.iter().any(|w| w.contains("readable")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn unreadable_config_and_bad_cli_arguments() {
    let d = Dir::new("cli");
    // The config file itself missing: line 0 (the whole file).
    let e = Config::load(&d.0.join("nope.toml")).unwrap_err();
    assert_eq!(e.line, 0);
    assert!(e.msg.contains("cannot read"), "{e}");
    let out = Command::new(BIN)
        .args(["peer", "--config"])
        .arg(d.0.join("nope.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":0: cannot read"));
    // Not UTF-8 / not TOML.
    let (line, _) = parse_err(&d.0, "\u{0}\u{1}garbage = = =");
    assert_eq!(line, 1);
    // A missing required argument is a usage error (clap, status 2), before anything runs.
    let out = Command::new(BIN).args(["peer"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

#[test]
fn durations_out_of_range() {
    // Found by the `config` fuzz target: a duration past u64::MAX seconds used to panic
    // in `Duration::from_secs_f64`; it is now a typed error naming the key.
    let d = Dir::new("dur");
    let g = good(&d.0);
    for v in [
        "99999999999999999999999s",
        "288888888888888888888888888888",
        "-1s",
        "1.5.5s",
    ] {
        assert!(esplab_netio::config::parse_duration(v).is_err(), "{v}");
        let to = format!("[log]\nretired_spi_grace = \"{v}\"\n");
        let bad = g.replacen("[[peer]]\n", &format!("{to}[[peer]]\n"), 1);
        let (line, msg) = parse_err(&d.0, &bad);
        assert!(msg.starts_with("log.retired_spi_grace"), "{v}: {msg}");
        assert_eq!(line, line_of(&bad, "retired_spi_grace"), "{v}: {msg}");
    }
    let bad = g.replacen(
        "[[peer]]\n",
        "[log]\nretired_spi_grace = \"99999999999999999999999s\"\n[[peer]]\n",
        1,
    );
    let line = line_of(&bad, "retired_spi_grace");
    cli_refuses(&d.0, &bad, line, "invalid duration");
}

#[test]
fn toml_syntax_errors_always_carry_a_message() {
    // Found by the `config` fuzz target: a stray carriage return ("\rN") gave a toml error
    // with an empty message, so the user saw only "peer.toml:1: ".
    let d = Dir::new("cr");
    for text in [
        "\rN",
        "\r",
        "name = \"x\"\r",
        "\r\n[",
        "name = \"x\"\n\rN\n",
    ] {
        let (line, msg) = parse_err(&d.0, text);
        assert!(!msg.trim().is_empty(), "{text:?}: empty message");
        assert!(
            line >= 1 && line <= text.matches('\n').count() + 1,
            "{text:?}: line {line}"
        );
    }
    let (line, msg) = parse_err(&d.0, "\rN");
    assert_eq!(line, 1);
    assert!(msg.contains("'\\r'"), "{msg}");
    cli_refuses(&d.0, "name = \"x\"\n\rN\n", 2, "TOML");
}
