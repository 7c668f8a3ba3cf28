//! `esplab lab probe` (hidden): the traffic generator of the netns driver, run inside a
//! namespace with `ip netns exec`. It sends numbered UDP datagrams from one protected host
//! to the other at a fixed rate and records every datagram of the other direction it
//! receives; at the end it prints one line per event on stdout:
//!
//! ```text
//! s SEQ T_US OK      a datagram of our direction sent (OK = 0 when sendto failed)
//! r DIR SEQ T_US     a datagram of direction DIR received
//! ```
//!
//! `T_US` is wall-clock time in microseconds since the Unix epoch: both probes run on one
//! host, so their times compare directly with each other and with the daemons' log lines.

use clap::Args;
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// UDP port of the probe datagrams (discard, as the simulator's generator).
pub const PROBE_PORT: u16 = 9;
/// First four bytes of every probe datagram.
const MAGIC: [u8; 4] = *b"ELP1";
/// Datagram length: magic, direction, sequence number.
const LEN: usize = 12;

/// Options of `esplab lab probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Our protected address (bound, port 9).
    #[arg(long)]
    pub bind: IpAddr,
    /// The other side's protected address.
    #[arg(long)]
    pub to: IpAddr,
    /// Our direction: 0 = A to B, 1 = B to A.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1))]
    pub dir: u32,
    /// Datagrams per second (0: only receive).
    #[arg(long)]
    pub rate: u32,
    /// When to send the first datagram, µs since the Unix epoch.
    #[arg(long)]
    pub start_us: u64,
    /// When to stop sending, µs since the Unix epoch.
    #[arg(long)]
    pub stop_us: u64,
    /// How long to keep receiving after the stop, ms.
    #[arg(long, default_value_t = 500)]
    pub linger_ms: u64,
    /// UDP port, ours and the other side's.
    #[arg(long, default_value_t = PROBE_PORT)]
    pub port: u16,
}

/// Why the probe could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The socket could not be set up.
    #[error("probe socket on {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The results could not be written.
    #[error("writing probe results: {0}")]
    Stdout(#[from] std::io::Error),
}

/// Wall-clock µs since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn sleep_until(t_us: u64) {
    let now = now_us();
    if t_us > now {
        std::thread::sleep(Duration::from_micros(t_us - now));
    }
}

/// The datagram of direction `dir` with number `seq`.
fn encode(dir: u32, seq: u32) -> [u8; LEN] {
    let mut p = [0u8; LEN];
    p[..4].copy_from_slice(&MAGIC);
    p[4..8].copy_from_slice(&dir.to_be_bytes());
    p[8..12].copy_from_slice(&seq.to_be_bytes());
    p
}

/// (direction, seq) of a probe datagram; anything else is ignored.
fn decode(p: &[u8]) -> Option<(u32, u32)> {
    if p.len() != LEN || p[..4] != MAGIC {
        return None;
    }
    let dir = u32::from_be_bytes(p[4..8].try_into().ok()?);
    let seq = u32::from_be_bytes(p[8..12].try_into().ok()?);
    (dir < 2).then_some((dir, seq))
}

/// Runs the probe and prints its records.
pub fn run(a: ProbeArgs, out: &mut dyn Write) -> Result<(), ProbeError> {
    let local = SocketAddr::new(a.bind, a.port);
    let sock_err = |source| ProbeError::Socket {
        addr: local,
        source,
    };
    let sock = UdpSocket::bind(local).map_err(sock_err)?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(sock_err)?;
    let tx = sock.try_clone().map_err(sock_err)?;
    let dst = SocketAddr::new(a.to, a.port);
    let (dir, rate, start, stop) = (a.dir, a.rate, a.start_us, a.stop_us);
    let sender = std::thread::spawn(move || {
        let mut sent: Vec<(u32, u64, bool)> = Vec::new();
        if rate == 0 {
            return sent;
        }
        let period = 1_000_000 / u64::from(rate);
        // Direction 1 half a period later, as in the simulator, so the two never tie.
        let first = start + if dir == 1 { period / 2 } else { 0 };
        let mut seq: u32 = 0;
        loop {
            let due = first + u64::from(seq) * period;
            if due >= stop {
                break;
            }
            // Keeps the schedule (no drift); a late wake-up sends the overdue ones at once.
            sleep_until(due);
            let t = now_us();
            // A failed send (no route while a restarted daemon brings its TUN device up)
            // is a packet lost at the sender, like the simulator's drop for want of an SA.
            let ok = tx.send_to(&encode(dir, seq), dst).is_ok();
            sent.push((seq, t, ok));
            seq += 1;
        }
        sent
    });
    let mut got: Vec<(u32, u32, u64)> = Vec::new();
    let end = stop + a.linger_ms * 1000;
    let mut buf = [0u8; 64];
    while now_us() < end {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                if let Some((d, s)) = decode(&buf[..n]) {
                    got.push((d, s, now_us()));
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // ICMP errors reported on the socket (port unreachable while the other probe is
            // not yet bound) are not fatal.
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    let sent = sender.join().unwrap_or_default();
    let mut text = String::with_capacity((sent.len() + got.len()) * 24);
    for (seq, t, ok) in sent {
        text.push_str(&format!("s {seq} {t} {}\n", u8::from(ok)));
    }
    for (d, seq, t) in got {
        text.push_str(&format!("r {d} {seq} {t}\n"));
    }
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// What one probe recorded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProbeLog {
    /// (seq, send time µs, sendto succeeded) of our direction.
    pub sent: Vec<(u32, u64, bool)>,
    /// (direction, seq, receive time µs) of the datagrams received.
    pub received: Vec<(u32, u32, u64)>,
}

/// Parses a probe's stdout; malformed lines are skipped (the probe is ours, but a
/// truncated last line must not fail the run).
pub fn parse(text: &str) -> ProbeLog {
    let mut p = ProbeLog::default();
    for l in text.lines() {
        let f: Vec<&str> = l.split_ascii_whitespace().collect();
        match f.as_slice() {
            ["s", seq, t, ok] => {
                if let (Ok(seq), Ok(t)) = (seq.parse(), t.parse()) {
                    p.sent.push((seq, t, *ok == "1"));
                }
            }
            ["r", d, seq, t] => {
                if let (Ok(d), Ok(seq), Ok(t)) = (d.parse(), seq.parse(), t.parse()) {
                    p.received.push((d, seq, t));
                }
            }
            _ => {}
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_round_trips_and_junk_is_ignored() {
        assert_eq!(decode(&encode(1, 77)), Some((1, 77)));
        assert_eq!(decode(&encode(0, 0)), Some((0, 0)));
        assert_eq!(decode(b"ELP1"), None);
        let mut bad = encode(0, 1);
        bad[7] = 2;
        assert_eq!(decode(&bad), None);
        bad = encode(0, 1);
        bad[0] = b'X';
        assert_eq!(decode(&bad), None);
    }

    #[test]
    fn parse_reads_records_and_skips_garbage() {
        let p = parse("s 0 100 1\ns 1 110 0\nr 1 5 120\nbogus\nr 9 x 1\ns 2");
        assert_eq!(p.sent, vec![(0, 100, true), (1, 110, false)]);
        assert_eq!(p.received, vec![(1, 5, 120)]);
    }

    #[test]
    fn probes_exchange_datagrams_over_loopback() {
        // Both directions on 127.0.0.1 would need two ports; one probe sending to itself
        // checks the send schedule and the records. A free port, not 9: other test
        // processes may run this at the same time.
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let start = now_us() + 20_000;
        let a = ProbeArgs {
            bind: "127.0.0.1".parse().unwrap(),
            to: "127.0.0.1".parse().unwrap(),
            dir: 0,
            rate: 100,
            start_us: start,
            stop_us: start + 200_000,
            linger_ms: 200,
            port,
        };
        let mut out = Vec::new();
        run(a, &mut out).unwrap();
        let p = parse(&String::from_utf8(out).unwrap());
        assert_eq!(p.sent.len(), 20);
        assert!(p.sent.iter().all(|s| s.2 && s.1 >= start));
        assert!(p.sent.windows(2).all(|w| w[1].0 == w[0].0 + 1));
        assert_eq!(p.received.len(), 20);
        assert!(p.received.iter().all(|r| r.0 == 0));
    }
}
