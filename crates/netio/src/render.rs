//! Plain-text renderings of control responses for `esplab show`.

use crate::control::{CounterRow, SaRow};

/// `show sa`: one row per SA, in the spirit of `show crypto ipsec sa`.
///
/// `REPLAY/SEQ` is `WINDOW/HIGHEST` for an inbound SA (replay window size, highest sequence
/// number accepted) and the last sequence number sent for an outbound one. `ENCAP` is
/// `udp:PORT` for RFC 3948 UDP-encapsulated ESP (the peer's port, which a NAT may have
/// moved from 4500) or `esp` for raw ESP (IP protocol 50).
pub fn sa_table(sas: &[SaRow]) -> String {
    let header = [
        "PEER",
        "DIR",
        "SPI",
        "ALG",
        "ENCAP",
        "PACKETS",
        "BYTES",
        "REPLAY/SEQ",
        "AGE",
    ];
    let rows: Vec<[String; 9]> = sas
        .iter()
        .map(|s| {
            let alg = if s.esn {
                format!("{}+esn", s.alg)
            } else {
                s.alg.clone()
            };
            let replay = if s.direction == "in" {
                format!("{}/{}", s.replay_window, s.seq)
            } else {
                s.seq.to_string()
            };
            [
                s.peer.clone(),
                s.direction.clone(),
                format!("0x{:08x}", s.spi),
                alg,
                encap(s),
                s.packets.to_string(),
                s.bytes.to_string(),
                replay,
                age(s.age_secs),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// The `ENCAP` cell: `udp:4500`, `esp`, or `-` when the daemon did not say (it predates
/// the field).
fn encap(s: &SaRow) -> String {
    match (s.encap.as_str(), s.udp_port) {
        ("", _) => "-".to_string(),
        (e, Some(port)) => format!("{e}:{port}"),
        (e, None) => e.to_string(),
    }
}

/// `show counters`: `NAME  VALUE` lines, names padded to one column; zero counters only
/// when `all`.
pub fn counter_lines(counters: &[CounterRow], all: bool) -> String {
    let shown: Vec<&CounterRow> = counters.iter().filter(|c| all || c.value != 0).collect();
    let width = shown.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in shown {
        out.push_str(&format!("{:<width$}  {}\n", c.name, c.value));
    }
    out
}

/// A duration in seconds as `42s`, `3m05s`, `2h07m` or `3d04h`.
pub fn age(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// Left-aligned columns separated by two spaces, no trailing blanks.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut width = header.map(str::len);
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(&format!("{c:<w$}", w = width[i]));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(dir: &str, spi: u32, seq: u64) -> SaRow {
        SaRow {
            peer: "b".into(),
            direction: dir.into(),
            spi,
            alg: "aes-gcm-128".into(),
            esn: false,
            packets: 3,
            bytes: 252,
            replay_window: if dir == "in" { 64 } else { 0 },
            seq,
            age_secs: 75.2,
            idle_secs: Some(1.0),
            encap: "udp".into(),
            udp_port: Some(4500),
        }
    }

    #[test]
    fn sa_table_shape() {
        let mut nat = row("out", 0xc0de0001, 3);
        nat.udp_port = Some(31000);
        let mut raw = row("out", 0xc0de0003, 7);
        (raw.encap, raw.udp_port) = ("esp".into(), None);
        let t = sa_table(&[row("in", 0xc0de0002, 3), nat, raw]);
        assert_eq!(
            t,
            "PEER  DIR  SPI         ALG          ENCAP      PACKETS  BYTES  REPLAY/SEQ  AGE\n\
             b     in   0xc0de0002  aes-gcm-128  udp:4500   3        252    64/3        1m15s\n\
             b     out  0xc0de0001  aes-gcm-128  udp:31000  3        252    3           1m15s\n\
             b     out  0xc0de0003  aes-gcm-128  esp        3        252    7           1m15s\n"
        );
    }

    /// Rows from a daemon that predates the encapsulation fields still render.
    #[test]
    fn sa_table_without_encap() {
        let old = r#"{"peer":"b","direction":"out","spi":"0xc0de0001","alg":"aes-gcm-128",
            "esn":true,"packets":3,"bytes":252,"replay_window":0,"seq":3,"age_secs":5.0}"#;
        let r: SaRow = serde_json::from_str(old).unwrap();
        assert_eq!(
            sa_table(&[r]),
            "PEER  DIR  SPI         ALG              ENCAP  PACKETS  BYTES  REPLAY/SEQ  AGE\n\
             b     out  0xc0de0001  aes-gcm-128+esn  -      3        252    3           5s\n"
        );
    }

    /// `show sa --json` carries the encapsulation as fields of each SA.
    #[test]
    fn sa_json_has_encap() {
        let mut resp = crate::control::Response::ok("a");
        let mut raw = row("out", 0xc0de0003, 7);
        (raw.encap, raw.udp_port) = ("esp".into(), None);
        resp.sas = Some(vec![row("in", 0xc0de0002, 3), raw]);
        let v: serde_json::Value = serde_json::to_value(&resp).unwrap();
        let sas = v["sas"].as_array().unwrap();
        assert_eq!(sas[0]["encap"], "udp");
        assert_eq!(sas[0]["udp_port"], 4500);
        assert_eq!(sas[1]["encap"], "esp");
        assert!(sas[1].get("udp_port").is_none(), "{}", sas[1]);
    }

    #[test]
    fn counters_hide_zeroes() {
        let c = vec![
            CounterRow {
                name: "IN_PACKETS".into(),
                value: 3,
            },
            CounterRow {
                name: "IN_US_V4_PKT_SA_NOT_FOUND_SPI".into(),
                value: 0,
            },
        ];
        assert_eq!(counter_lines(&c, false), "IN_PACKETS  3\n");
        assert_eq!(
            counter_lines(&c, true),
            "IN_PACKETS                     3\nIN_US_V4_PKT_SA_NOT_FOUND_SPI  0\n"
        );
    }

    #[test]
    fn ages() {
        assert_eq!(age(0.4), "0s");
        assert_eq!(age(59.9), "59s");
        assert_eq!(age(185.0), "3m05s");
        assert_eq!(age(7620.0), "2h07m");
        assert_eq!(age(273_600.0), "3d04h");
        assert_eq!(age(f64::NAN), "0s");
    }
}
