//! The metrics of a netns run, from what the probes recorded and what the daemons logged:
//! the definitions of docs/lab.md, computed the way the simulator computes them
//! (`esplab_lab::sim`), on wall-clock times relative to the start of the run.
//!
//! Pure functions of [`RunData`]: tested without namespaces.

use super::probe::ProbeLog;
use esplab_lab::report::{Bins, Metrics, RunReport, TimelineEntry};
use std::collections::BTreeMap;

/// Probe sequence numbers taken into account (a day at 100/s each way); records beyond
/// are ignored rather than allocated for.
const MAX_SEQ: usize = 1 << 24;

/// Largest timeline kept per run (as the simulator).
const TIMELINE_MAX: usize = 5000;

/// A timeline entry the driver itself adds (faults).
#[derive(Debug, Clone)]
pub struct Sample {
    /// Wall clock, µs since the Unix epoch.
    pub t_us: u64,
    /// 0 = A, 1 = B.
    pub side: usize,
    /// Timeline kind.
    pub kind: String,
    /// Text.
    pub text: String,
}

impl Sample {
    /// A note at `t_us`.
    pub fn note(t_us: u64, side: usize, kind: &str, text: String) -> Sample {
        Sample {
            t_us,
            side,
            kind: kind.into(),
            text,
        }
    }
}

/// Everything one run left behind.
#[derive(Debug, Default)]
pub struct RunData {
    /// Start of the run (the daemons were started), µs since the epoch.
    pub t0_us: u64,
    /// End of the run (the probes stopped sending).
    pub end_us: u64,
    /// When the first fault was applied.
    pub t_fault_us: Option<u64>,
    /// Scheduled times of the faults inside the run (plot marks).
    pub fault_at_us: Vec<u64>,
    /// The probes of A (sends direction 0) and B (sends direction 1).
    pub probes: [ProbeLog; 2],
    /// The daemons' logs (stderr), A then B.
    pub logs: [String; 2],
    /// The daemons' event files (JSON lines).
    pub events: [String; 2],
    /// The driver's own timeline entries.
    pub notes: Vec<Sample>,
    /// Counters before the first fault.
    pub counters_before: [BTreeMap<String, u64>; 2],
    /// Counters at the end.
    pub counters_after: [BTreeMap<String, u64>; 2],
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time with milliseconds
/// (`2026-11-27T17:36:47.692Z`, the daemons' format).
pub fn parse_time_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = s.get(19..s.len() - 1)?;
    let millis = match frac.strip_prefix('.') {
        Some(f) if !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()) => {
            let f3 = format!("{f:0<3}");
            f3[..3].parse::<i64>().ok()?
        }
        None if frac.is_empty() => 0,
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm, public facts).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 86_400 + h * 3600 + mi * 60 + se) * 1000) + millis;
    u64::try_from(ms).ok()
}

/// (time ms since the epoch, message) of a daemon log line `TIME esplab[NODE]: MESSAGE`.
pub fn parse_log_line(l: &str) -> Option<(u64, &str)> {
    let (t, rest) = l.split_once(' ')?;
    let t = parse_time_ms(t)?;
    let (_, msg) = rest.split_once("]: ")?;
    Some((t, msg))
}

/// The timeline kind of a log message.
fn kind_of(msg: &str) -> &'static str {
    if msg.contains("RECVD_PKT_INV_SPI: decaps") {
        "invalid-spi"
    } else if msg.contains("RECVD_PKT_INV_SPI:") {
        "suppressed"
    } else if msg.contains("INV_SPI_RECOVERY") || msg.contains("%CRYPTO-4-DPD") {
        "recovery"
    } else if msg.starts_with("IKE ") && msg.contains(" sent ") {
        "ike-sent"
    } else if msg.starts_with("IKE ") && msg.contains(" received ") {
        "ike-received"
    } else if msg.starts_with("IKE ") {
        "ike"
    } else if msg.starts_with("CHILD SA installed") {
        "child-installed"
    } else if msg.starts_with("CHILD SA removed") {
        "child-removed"
    } else {
        "log"
    }
}

/// Whether a recovery log line is an action on the wire (as the simulator's
/// `is_recovery_action`: Delete / Notify sent, IKE initiated, hint sent).
fn is_action(msg: &str) -> bool {
    msg.contains("INV_SPI_RECOVERY")
        && [
            "sent INFORMATIONAL Delete",
            "sent INFORMATIONAL N(INVALID_SPI)",
            "initiating IKE SA",
            "hint",
        ]
        .iter()
        .any(|k| msg.contains(k))
}

/// Wireshark UAT lines the daemons logged (`esp_sa`, `ikev2_decryption_table`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `esp_sa` lines.
    pub esp: Vec<String>,
    /// `ikev2_decryption_table` lines.
    pub ike: Vec<String>,
}

/// Builds the run's report and the Wireshark key lines.
pub fn compute(d: &RunData, recovery: bool) -> (RunReport, Keys) {
    let t0 = d.t0_us;
    let rel = |t_us: u64| t_us.saturating_sub(t0) as f64 / 1000.0;
    let rel_ms = |t_ms: u64| (t_ms as f64 * 1000.0 - t0 as f64) / 1000.0;
    let end = d.end_us;
    let fault = d.t_fault_us;
    let mut m = Metrics {
        t_fault_ms: fault.map(rel),
        ..Metrics::default()
    };
    // --- Traffic: per direction, send time and first delivery time of every seq.
    let mut sent_at: [Vec<(u64, bool)>; 2] = Default::default();
    let mut got_at: [Vec<Option<u64>>; 2] = Default::default();
    for dir in 0..2 {
        let s = &d.probes[dir].sent;
        // Bounded, whatever the records say.
        let n = s
            .iter()
            .map(|x| x.0 as usize + 1)
            .max()
            .unwrap_or(0)
            .min(MAX_SEQ);
        sent_at[dir] = vec![(0, false); n];
        for &(seq, t, ok) in s {
            if let Some(slot) = sent_at[dir].get_mut(seq as usize) {
                *slot = (t, ok);
            }
        }
        got_at[dir] = vec![None; n];
    }
    // Direction `dir` is received by the other side's probe.
    let mut deliveries: Vec<(u64, usize, u32)> = Vec::new();
    for p in &d.probes {
        for &(dir, seq, t) in &p.received {
            let dir = dir as usize;
            if let Some(slot) = got_at.get_mut(dir).and_then(|g| g.get_mut(seq as usize)) {
                if slot.is_none() {
                    *slot = Some(t);
                    deliveries.push((t, dir, seq));
                }
            }
        }
    }
    deliveries.sort_unstable();
    let bin_us = ((end.saturating_sub(t0)) / 240).max(500_000);
    let mut bins = Bins::new(bin_us, end.saturating_sub(t0));
    // First packet sent at or after the fault that never arrived: the netns driver cannot
    // see the drop itself (at the sender's daemon, in the kernel, at the receiver), only
    // that the packet never came; it was dropped within a few ms of being sent.
    let mut first_drop: [Option<u64>; 2] = [None; 2];
    for dir in 0..2 {
        for (k, &(t, _)) in sent_at[dir].iter().enumerate() {
            if t == 0 || got_at[dir][k].is_some() {
                continue;
            }
            bins.dropped(dir, t.saturating_sub(t0));
            if fault.is_some_and(|f| t >= f) && first_drop[dir].is_none() {
                first_drop[dir] = Some(t);
            }
        }
    }
    let fd = first_drop.iter().flatten().min().copied();
    m.t_first_drop_ms = fd.map(rel);
    let mut recovered_dir: [Option<u64>; 2] = [None; 2];
    let mut last_delivery: [Option<u64>; 2] = [None; 2];
    let mut recovered_at = None;
    for &(t, dir, seq) in &deliveries {
        bins.delivered(dir, t.saturating_sub(t0));
        if let Some(f) = fault {
            if t >= f {
                let from = last_delivery[dir].unwrap_or(f).max(f);
                m.longest_gap_ms = m.longest_gap_ms.max((t - from) as f64 / 1000.0);
            }
        }
        last_delivery[dir] = Some(t);
        if let (Some(fd), None) = (fd, recovered_at) {
            let sent = sent_at[dir][seq as usize].0;
            if sent > fd && recovered_dir[dir].is_none() {
                recovered_dir[dir] = Some(t);
            }
            if let [Some(a), Some(b)] = recovered_dir {
                recovered_at = Some(a.max(b));
            }
        }
    }
    m.t_recovered_ms = recovered_at.map(rel);
    m.recovered = recovered_at.is_some();
    m.blackhole_ms = match (fault, fd, recovered_at) {
        (Some(f), Some(_), Some(r)) => Some((r.saturating_sub(f)) as f64 / 1000.0),
        (Some(f), Some(_), None) => Some(end.saturating_sub(f) as f64 / 1000.0),
        (Some(_), None, _) => Some(0.0),
        _ => None,
    };
    if let Some(f) = fault {
        for last in last_delivery {
            let from = last.unwrap_or(f).max(f);
            m.longest_gap_ms = m
                .longest_gap_ms
                .max(end.saturating_sub(from) as f64 / 1000.0);
        }
        // Packets sent in the last second may still be in flight (as the simulator).
        let horizon = end.saturating_sub(1_000_000);
        for dir in 0..2 {
            let (mut sent, mut lost) = (0, 0);
            for (k, &(t, _)) in sent_at[dir].iter().enumerate() {
                if t != 0 && t >= f && t < horizon {
                    sent += 1;
                    lost += u64::from(got_at[dir][k].is_none());
                }
            }
            m.sent_after_fault[dir] = sent;
            m.lost[dir] = lost;
        }
    }
    for dir in 0..2 {
        m.sent[dir] = sent_at[dir].iter().filter(|s| s.0 != 0).count() as u64;
        m.delivered[dir] = got_at[dir].iter().filter(|g| g.is_some()).count() as u64;
    }
    // --- Events (invalid SPI) from the event files.
    let fault_ms = m.t_fault_ms;
    // Log times have millisecond resolution: "after the fault" allows for the truncation.
    let after = |t: f64| fault_ms.is_some_and(|f| t >= f - 1.0);
    for ev in &d.events {
        for l in ev.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                continue;
            };
            let Some(t) = v["time"].as_str().and_then(parse_time_ms) else {
                continue;
            };
            let t = rel_ms(t);
            match v["type"].as_str() {
                Some("invalid-spi") => {
                    m.invalid_spi_events += 1;
                    if v["logged"].as_bool() == Some(true) {
                        m.log_lines += 1;
                    } else {
                        m.suppressed += 1;
                    }
                    if after(t) && m.t_detect_ms.is_none_or(|x| t < x) {
                        m.t_detect_ms = Some(t.max(fault_ms.unwrap_or(t)));
                    }
                }
                Some("retired-spi") => m.retired_spi_events += 1,
                _ => {}
            }
        }
    }
    // --- The daemons' logs: timeline, IKE messages, recovery events, esp_sa lines.
    let mut timeline: Vec<(f64, usize, TimelineEntry)> = Vec::new();
    let mut uat = Vec::new();
    let mut ike_uat = Vec::new();
    let mut cost: Vec<(f64, bool, bool)> = Vec::new();
    let mut inits: Vec<f64> = Vec::new();
    let mut act_recovery: Option<f64> = None;
    let mut order = 0usize;
    let mut push = |timeline: &mut Vec<(f64, usize, TimelineEntry)>, e: TimelineEntry| {
        order += 1;
        timeline.push((e.t_ms, order, e));
    };
    for (i, log) in d.logs.iter().enumerate() {
        for l in log.lines() {
            let Some((t, msg)) = parse_log_line(l) else {
                continue;
            };
            let t = rel_ms(t);
            if let Some(u) = msg.strip_prefix("debug-keys esp_sa: ") {
                if !uat.iter().any(|x: &String| x == u) {
                    uat.push(u.to_string());
                }
                continue;
            }
            if let Some(u) = msg.strip_prefix("debug-keys ikev2_decryption_table: ") {
                if !ike_uat.iter().any(|x: &String| x == u) {
                    ike_uat.push(u.to_string());
                }
                continue;
            }
            if msg.starts_with("debug-keys") {
                continue;
            }
            let kind = kind_of(msg);
            match kind {
                "ike-sent" => {
                    let retransmit = msg.contains("(retransmit)");
                    let delete =
                        msg.contains("sent INFORMATIONAL request") && msg.contains("D(ESP");
                    let notify = msg.contains("N(INVALID_SPI)");
                    if after(t) && !retransmit && (delete || notify) {
                        cost.push((t, delete, notify));
                    }
                }
                "ike" if msg.contains("SaInitSent") && after(t) => {
                    m.ike_initiated += 1;
                    inits.push(t);
                }
                "recovery" => {
                    m.recovery_events += 1;
                    if after(t) && is_action(msg) && act_recovery.is_none_or(|a| t < a) {
                        act_recovery = Some(t);
                    }
                }
                _ => {}
            }
            push(
                &mut timeline,
                TimelineEntry {
                    t_ms: t,
                    peer: ["A", "B"][i].into(),
                    kind: kind.into(),
                    text: msg.to_string(),
                },
            );
        }
    }
    for n in &d.notes {
        push(
            &mut timeline,
            TimelineEntry {
                t_ms: rel(n.t_us),
                peer: ["A", "B"][n.side.min(1)].into(),
                kind: n.kind.clone(),
                text: n.text.clone(),
            },
        );
    }
    if let Some(r) = recovered_at {
        push(
            &mut timeline,
            TimelineEntry {
                t_ms: rel(r),
                peer: "A".into(),
                kind: "recovered".into(),
                text: "traffic flows again in both directions".into(),
            },
        );
    }
    // Only messages at or after the detection are recovery cost (as the simulator).
    let mut act_msg: Option<f64> = None;
    if let Some(det) = m.t_detect_ms {
        for &(t, del, not) in cost.iter().filter(|c| c.0 >= det - 1.0) {
            m.deletes_sent += u64::from(del);
            m.notifies_sent += u64::from(not);
            act_msg = Some(act_msg.map_or(t, |a| a.min(t)));
        }
        if let Some(&t) = inits.iter().find(|t| **t >= det - 1.0) {
            act_msg = Some(act_msg.map_or(t, |a| a.min(t)));
        }
    }
    m.t_action_ms = act_recovery.or(act_msg);
    // Receiver drops by reason: the counter deltas of both daemons (a restarted daemon's
    // counters start from zero).
    for i in 0..2 {
        for (name, &a) in &d.counters_after[i] {
            let Some(reason) = name
                .strip_prefix("IN_US_V4_PKT_")
                .or_else(|| name.strip_prefix("IN_US_V6_PKT_"))
            else {
                continue;
            };
            let b = d.counters_before[i].get(name).copied().unwrap_or(0);
            let delta = if a >= b { a - b } else { a };
            if delta > 0 {
                let key = reason.to_ascii_lowercase().replace('_', "-");
                if key == "retired-spi" {
                    m.retired_spi_drops += delta;
                }
                *m.drop_reasons.entry(key).or_insert(0) += delta;
            }
        }
    }
    timeline.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let total = timeline.len();
    let timeline: Vec<TimelineEntry> = timeline
        .into_iter()
        .take(TIMELINE_MAX)
        .map(|x| x.2)
        .collect();
    m.timeline_truncated = (total - timeline.len()) as u64;
    let mut counters = BTreeMap::new();
    for (i, n) in ["a", "b"].iter().enumerate() {
        counters.insert(format!("{n}_before"), d.counters_before[i].clone());
        counters.insert(format!("{n}_after"), d.counters_after[i].clone());
    }
    let mut marks: Vec<(f64, String)> = d
        .fault_at_us
        .iter()
        .map(|&t| (rel(t), "fault".to_string()))
        .collect();
    for (t, l) in [
        (m.t_detect_ms, "detect"),
        (m.t_action_ms, "action"),
        (m.t_recovered_ms, "recovered"),
    ] {
        if let Some(t) = t {
            marks.push((t, l.into()));
        }
    }
    let run = RunReport {
        recovery: if recovery { "on" } else { "off" }.into(),
        metrics: m,
        timeline,
        counters,
        plot: bins.finish(marks),
    };
    (
        run,
        Keys {
            esp: uat,
            ike: ike_uat,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse() {
        assert_eq!(parse_time_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_time_ms("1970-01-02T00:00:01.5Z"), Some(86_401_500));
        // 2026-01-01T00:00:00Z = 1767225600 (the simulator's pcap epoch).
        assert_eq!(
            parse_time_ms("2026-01-01T00:00:00.250Z"),
            Some(1_767_225_600_250)
        );
        assert_eq!(
            parse_time_ms("2024-02-29T12:00:00Z"),
            Some(1_709_208_000_000)
        );
        for bad in [
            "",
            "2026-01-01 00:00:00.000Z",
            "2026-13-01T00:00:00.000Z",
            "2026-01-01T00:00:00.00xZ",
            "2026-01-01T00:00:00.000",
            "2026-01-01T25:00:00.000Z",
        ] {
            assert_eq!(parse_time_ms(bad), None, "{bad}");
        }
        let (t, m) = parse_log_line("1970-01-01T00:00:01.000Z esplab[b]: hello: world").unwrap();
        assert_eq!((t, m), (1000, "hello: world"));
        assert!(parse_log_line("garbage").is_none());
    }

    fn line(t_ms: u64, msg: &str) -> String {
        // t_ms after 1970-01-01T00:00:10.000Z.
        let t = 10_000 + t_ms;
        format!(
            "1970-01-01T00:00:{:02}.{:03}Z esplab[x]: {msg}\n",
            t / 1000,
            t % 1000
        )
    }

    fn event(t_ms: u64, logged: bool) -> String {
        let t = 10_000 + t_ms;
        format!(
            "{{\"time\":\"1970-01-01T00:00:{:02}.{:03}Z\",\"type\":\"invalid-spi\",\"logged\":{logged}}}\n",
            t / 1000,
            t % 1000
        )
    }

    /// 10 pps each way for 20 s, t0 = 10 s after the epoch; the fault at +5 s; A→B
    /// packets sent in [5, 6.5) s and B→A in [5, 6) s never arrive.
    fn data() -> RunData {
        let t0 = 10_000_000u64;
        let mut d = RunData {
            t0_us: t0,
            end_us: t0 + 20_000_000,
            t_fault_us: Some(t0 + 5_000_000),
            fault_at_us: vec![t0 + 5_000_000],
            ..RunData::default()
        };
        for dir in 0..2u32 {
            for seq in 0..200u32 {
                let t = t0 + u64::from(seq) * 100_000 + u64::from(dir) * 50_000;
                d.probes[dir as usize].sent.push((seq, t, true));
                let rel = t - t0;
                let lost = if dir == 0 {
                    (5_000_000..6_500_000).contains(&rel)
                } else {
                    (5_000_000..6_000_000).contains(&rel)
                };
                if !lost {
                    d.probes[1 - dir as usize]
                        .received
                        .push((dir, seq, t + 1000));
                }
            }
        }
        d.events[1] = event(5_001, true) + &event(5_101, false) + &event(5_201, false);
        d.logs[1] = line(5_001, "%CRYPTO-4-RECVD_PKT_INV_SPI: decaps: rec'd IPSEC packet has invalid spi for destaddr=198.18.0.2")
            + &line(5_002, "%CRYPTO-5-INV_SPI_RECOVERY: no IKE SA, initiating IKE SA with INITIAL_CONTACT peer=a srcaddr=198.18.0.1")
            + &line(5_002, "IKE event: SaInitSent { ike_sa: 1, peer: \"a\", remote: 198.18.0.1:500 }")
            + &line(5_003, "IKE SA 1 sent INFORMATIONAL request #2 198.18.0.2:4500 -> 198.18.0.1:4500 [ D(ESP,[0xc1]) ]")
            + &line(5_004, "IKE SA 1 sent INFORMATIONAL request #2 198.18.0.2:4500 -> 198.18.0.1:4500 [ D(ESP,[0xc1]) ] (retransmit)")
            + &line(5_004, "debug-keys esp_sa: \"IPv4\",\"198.18.0.1\"")
            + &line(5_004, "debug-keys ikev2_decryption_table: ae28,66")
            + &line(5_004, "debug-keys: key material of every negotiated SA will be logged")
            + &line(1_000, "IKE SA 1 sent INFORMATIONAL request #1 198.18.0.2:4500 -> 198.18.0.1:4500 [ D(ESP,[0xc0]) ]");
        d.logs[0] = line(
            5_003,
            "IKE SA 1 received INFORMATIONAL request #2 [ D(ESP,[0xc1]) ]",
        );
        d.counters_before[1].insert("IN_US_V4_PKT_SA_NOT_FOUND_SPI".into(), 4);
        d.counters_after[1].insert("IN_US_V4_PKT_SA_NOT_FOUND_SPI".into(), 3);
        d.counters_after[0].insert("IN_US_V4_PKT_RETIRED_SPI".into(), 2);
        d.notes
            .push(Sample::note(t0 + 5_000_000, 1, "fault", "restart".into()));
        d
    }

    #[test]
    fn metrics_follow_the_simulator_definitions() {
        let (r, uat) = compute(&data(), true);
        let m = &r.metrics;
        assert_eq!(r.recovery, "on");
        assert_eq!(m.t_fault_ms, Some(5000.0));
        assert_eq!(m.t_first_drop_ms, Some(5000.0));
        // A→B's first packet after the drop window is sent at 6.5 s and arrives 1 ms
        // later; B→A recovered earlier.
        assert_eq!(m.t_recovered_ms, Some(6501.0));
        assert!(m.recovered);
        assert_eq!(m.blackhole_ms, Some(1501.0));
        assert_eq!(m.lost.a_to_b, 15);
        assert_eq!(m.lost.b_to_a, 10);
        // Sent in [5, 19) s: 140 each way.
        assert_eq!(m.sent_after_fault.a_to_b, 140);
        assert_eq!(m.sent.a_to_b, 200);
        assert_eq!(m.delivered.a_to_b, 185);
        // Last A→B delivery before the gap at 4.901 s; the gap is from the fault (5 s) to
        // the first delivery after it (6.501 s).
        assert!(
            (m.longest_gap_ms - 1501.0).abs() < 1e-6,
            "{}",
            m.longest_gap_ms
        );
        assert_eq!(m.t_detect_ms, Some(5001.0));
        assert_eq!((m.log_lines, m.suppressed, m.invalid_spi_events), (1, 2, 3));
        assert_eq!(m.t_action_ms, Some(5002.0));
        assert_eq!(m.ike_initiated, 1);
        // The retransmission and the rekey Delete before the fault are not counted.
        assert_eq!(m.deletes_sent, 1);
        assert_eq!(m.notifies_sent, 0);
        assert_eq!(m.recovery_events, 1);
        // A restarted daemon's counter starts again from 0: the value after is the delta.
        assert_eq!(m.drop_reasons.get("sa-not-found-spi"), Some(&3));
        assert_eq!(m.retired_spi_drops, 2);
        assert_eq!(uat.esp, vec!["\"IPv4\",\"198.18.0.1\"".to_string()]);
        assert_eq!(uat.ike, vec!["ae28,66".to_string()]);
        assert!(r.timeline.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
        assert!(r
            .timeline
            .iter()
            .any(|e| e.kind == "fault" && e.peer == "B" && e.t_ms == 5000.0));
        assert!(r.timeline.iter().any(|e| e.kind == "recovered"));
        assert!(!r.timeline.iter().any(|e| e.text.starts_with("debug-keys")));
        assert!(r.counters.contains_key("b_before") && r.counters.contains_key("a_after"));
    }

    #[test]
    fn wild_sequence_numbers_are_ignored() {
        let mut d = data();
        let base = compute(&d, true).0.metrics;
        d.probes[0].sent.push((u32::MAX, d.t0_us + 1, true));
        d.probes[1].received.push((0, u32::MAX - 1, d.t0_us + 2));
        d.probes[1].received.push((0, 1 << 25, d.t0_us + 2));
        let m = compute(&d, true).0.metrics;
        assert_eq!(m.sent, base.sent);
        assert_eq!(m.delivered, base.delivered);
        assert_eq!(m.lost, base.lost);
    }

    #[test]
    fn no_recovery_runs_to_the_end() {
        let mut d = data();
        // Nothing A→B arrives after the fault.
        d.probes[1]
            .received
            .retain(|&(dir, _, t)| dir != 0 || t < 10_000_000 + 5_000_000);
        let (r, _) = compute(&d, false);
        let m = &r.metrics;
        assert!(!m.recovered);
        assert_eq!(m.t_recovered_ms, None);
        assert_eq!(m.blackhole_ms, Some(15_000.0));
        assert_eq!(m.longest_gap_ms, 15_000.0);
        assert_eq!(r.recovery, "off");
    }

    #[test]
    fn nothing_dropped_means_no_blackhole() {
        let mut d = data();
        d.probes = Default::default();
        for dir in 0..2u32 {
            for seq in 0..10u32 {
                let t = d.t0_us + 4_000_000 + u64::from(seq) * 200_000;
                d.probes[dir as usize].sent.push((seq, t, true));
                d.probes[1 - dir as usize].received.push((dir, seq, t + 10));
            }
        }
        let (r, _) = compute(&d, true);
        assert_eq!(r.metrics.t_first_drop_ms, None);
        assert_eq!(r.metrics.blackhole_ms, Some(0.0));
        assert!(!r.metrics.recovered);
    }
}
