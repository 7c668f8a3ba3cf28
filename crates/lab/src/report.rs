//! Run metrics, the report (JSON, text, SVG) and the output directory.

use crate::pcap::PcapBuf;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// A value per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PerDir {
    /// A to B.
    pub a_to_b: u64,
    /// B to A.
    pub b_to_a: u64,
}

impl std::ops::Index<usize> for PerDir {
    type Output = u64;
    fn index(&self, i: usize) -> &u64 {
        if i == 0 {
            &self.a_to_b
        } else {
            &self.b_to_a
        }
    }
}

impl std::ops::IndexMut<usize> for PerDir {
    fn index_mut(&mut self, i: usize) -> &mut u64 {
        if i == 0 {
            &mut self.a_to_b
        } else {
            &mut self.b_to_a
        }
    }
}

/// The metrics of one run (docs/lab.md). Times are ms of virtual time since the start;
/// `None` (JSON null) where the thing never happened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    /// The first scheduled fault.
    pub t_fault_ms: Option<f64>,
    /// First generator packet dropped (at the sender for want of an SA, or at the receiver)
    /// after the fault.
    pub t_first_drop_ms: Option<f64>,
    /// First invalid-SPI event after the fault.
    pub t_detect_ms: Option<f64>,
    /// First Delete / INVALID_SPI sent or IKE_SA_INIT started after detection (from
    /// recovery events when the agent reports them).
    pub t_action_ms: Option<f64>,
    /// First instant after the first drop by which both directions delivered a packet sent
    /// after that drop.
    pub t_recovered_ms: Option<f64>,
    /// Whether traffic recovered within the run.
    pub recovered: bool,
    /// `t_recovered - t_fault`; to the end of the run when not recovered; 0 when nothing
    /// was dropped.
    pub blackhole_ms: Option<f64>,
    /// Longest time one direction went without a delivery after the fault (open gaps run to
    /// the end of the run).
    pub longest_gap_ms: f64,
    /// Generator packets sent at or after the fault (and at least 1 s before the end) that
    /// never arrived.
    pub lost: PerDir,
    /// Generator packets sent at or after the fault.
    pub sent_after_fault: PerDir,
    /// Generator packets sent in the whole run.
    pub sent: PerDir,
    /// Generator packets delivered in the whole run (duplicates once).
    pub delivered: PerDir,
    /// Invalid-SPI log lines that passed the rate limit (both peers, whole run).
    pub log_lines: u64,
    /// Invalid-SPI events whose log line the rate limit suppressed.
    pub suppressed: u64,
    /// All invalid-SPI events.
    pub invalid_spi_events: u64,
    /// Retired-SPI events reported by the agents.
    pub retired_spi_events: u64,
    /// Generator packets dropped at the receiver for a retired SPI (late packets).
    pub retired_spi_drops: u64,
    /// Generator packets dropped at the receiver, by reason.
    pub drop_reasons: BTreeMap<String, u64>,
    /// IKE_SA_INIT exchanges started after the fault (both peers).
    pub ike_initiated: u64,
    /// INFORMATIONAL requests with Delete(ESP) sent after the fault.
    pub deletes_sent: u64,
    /// Messages with N(INVALID_SPI) sent after the fault.
    pub notifies_sent: u64,
    /// Recovery events reported by the agents.
    pub recovery_events: u64,
    /// Timeline entries left out (the timeline is capped).
    pub timeline_truncated: u64,
    /// Hub-and-spokes runs only (`topology.spokes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubMetrics>,
}

/// Metrics of a hub-and-spokes run (`a_to_b` of the other metrics is hub → spokes).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HubMetrics {
    /// Spokes in the topology.
    pub spokes: u64,
    /// Spokes that lost a generator packet after the fault.
    pub spokes_affected: u64,
    /// ... and of those, spokes with traffic flowing both ways again within the run.
    pub spokes_recovered: u64,
    /// Median time from the fault until a spoke recovered, ms.
    pub median_recovery_ms: Option<f64>,
    /// IKE_SA_INIT exchanges the hub started after the fault.
    pub hub_initiated: u64,
    /// IKE datagrams sent or received by the hub from the fault to the end of the run.
    pub hub_ike_msgs_after_fault: u64,
    /// The busiest second for IKE at the hub after the fault (datagrams in + out).
    pub hub_ike_max_per_s: u32,
    /// IKE datagrams per second at the hub, averaged from the fault until all spokes
    /// recovered (or the end of the run).
    pub hub_ike_avg_per_s: f64,
}

/// One line of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    /// Virtual time, ms.
    pub t_ms: f64,
    /// `A`, `B` or `X` (the third host).
    pub peer: String,
    /// What kind of event.
    pub kind: String,
    /// The vendor log line or a description.
    pub text: String,
}

/// Packet counts per time bin, for the plot.
#[derive(Debug, Clone, Default)]
pub struct Bins {
    width_us: u64,
    delivered: [Vec<u32>; 2],
    dropped: [Vec<u32>; 2],
}

impl Bins {
    /// Bins of `width_us` covering `end_us`.
    pub fn new(width_us: u64, end_us: u64) -> Self {
        let n = end_us.div_ceil(width_us.max(1)).max(1) as usize;
        Bins {
            width_us: width_us.max(1),
            delivered: [vec![0; n], vec![0; n]],
            dropped: [vec![0; n], vec![0; n]],
        }
    }

    fn slot(&self, t: u64) -> usize {
        ((t / self.width_us) as usize).min(self.delivered[0].len() - 1)
    }

    /// A packet of direction `dir` delivered at `t`.
    pub fn delivered(&mut self, dir: usize, t: u64) {
        let s = self.slot(t);
        self.delivered[dir][s] += 1;
    }

    /// A packet of direction `dir` dropped at `t`.
    pub fn dropped(&mut self, dir: usize, t: u64) {
        let s = self.slot(t);
        self.dropped[dir][s] += 1;
    }

    /// The plot data, with marks `(t_ms, label)`.
    pub fn finish(self, marks: Vec<(f64, String)>) -> Plot {
        Plot {
            bin_ms: self.width_us as f64 / 1000.0,
            delivered: self.delivered,
            dropped: self.dropped,
            marks,
        }
    }
}

/// Series for the plot of one run.
#[derive(Debug, Clone, Default)]
pub struct Plot {
    /// Bin width, ms.
    pub bin_ms: f64,
    /// Delivered per bin, per direction.
    pub delivered: [Vec<u32>; 2],
    /// Dropped per bin, per direction.
    pub dropped: [Vec<u32>; 2],
    /// Fault / detect / action / recovered marks.
    pub marks: Vec<(f64, String)>,
}

/// One run (recovery on or off).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `on` or `off`.
    pub recovery: String,
    /// The metrics.
    pub metrics: Metrics,
    /// Time-ordered events of both peers.
    pub timeline: Vec<TimelineEntry>,
    /// Counters of both peers before the fault and at the end.
    pub counters: BTreeMap<String, BTreeMap<String, u64>>,
    /// Plot series (not in the JSON).
    #[serde(skip)]
    pub plot: Plot,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// What it shows.
    pub description: String,
    /// The expected outcome.
    pub expect: String,
    /// The seed.
    pub seed: u64,
    /// `sim`.
    pub driver: String,
    /// Virtual run length, s.
    pub duration_s: f64,
    /// The runs.
    pub runs: Vec<RunReport>,
}

/// A report plus the captures of its runs and the Wireshark `esp_sa` and
/// `ikev2_decryption_table` lines.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The report.
    pub report: Report,
    /// One capture per run, in run order.
    pub pcaps: Vec<PcapBuf>,
    /// Wireshark `esp_sa` UAT lines (both runs).
    pub uat: Vec<String>,
    /// Wireshark `ikev2_decryption_table` UAT lines, one per IKE SA (both runs).
    pub ike_uat: Vec<String>,
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |ms| format!("{:.3} s", ms / 1000.0))
}

fn rel(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) => format!("{:.3} s (+{:.3})", v / 1000.0, (v - b) / 1000.0),
        (Some(v), None) => format!("{:.3} s", v / 1000.0),
        _ => "-".into(),
    }
}

impl Report {
    /// The JSON report (deterministic: same scenario and seed, same bytes).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// The one-screen summary: metrics side by side and the verdict.
    pub fn summary(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "esplab lab: {} (seed {}, driver {}, {} s of virtual time)",
            self.scenario, self.seed, self.driver, self.duration_s
        );
        if !self.description.is_empty() {
            let _ = writeln!(o, "  {}", self.description.trim());
        }
        if !self.expect.is_empty() {
            let _ = writeln!(o, "  expected: {}", self.expect.trim());
        }
        let _ = writeln!(o);
        let _ = write!(o, "{:<16}", "metric");
        for r in &self.runs {
            let _ = write!(o, "{:>26}", format!("recovery {}", r.recovery));
        }
        let _ = writeln!(o);
        type Row = (&'static str, fn(&Metrics) -> String);
        let rows: [Row; 15] = [
            ("t_fault", |m| secs(m.t_fault_ms)),
            ("t_first_drop", |m| rel(m.t_first_drop_ms, m.t_fault_ms)),
            ("t_detect", |m| rel(m.t_detect_ms, m.t_fault_ms)),
            ("t_action", |m| rel(m.t_action_ms, m.t_fault_ms)),
            ("t_recovered", |m| rel(m.t_recovered_ms, m.t_fault_ms)),
            ("blackhole", |m| match m.blackhole_ms {
                Some(b) if !m.recovered && m.t_first_drop_ms.is_some() => {
                    format!(">= {:.3} s (not recovered)", b / 1000.0)
                }
                b => secs(b),
            }),
            ("longest_gap", |m| {
                format!("{:.3} s", m.longest_gap_ms / 1000.0)
            }),
            ("retired_spi", |m| m.retired_spi_drops.to_string()),
            ("lost a->b/b->a", |m| {
                format!("{}/{}", m.lost.a_to_b, m.lost.b_to_a)
            }),
            ("log_lines", |m| m.log_lines.to_string()),
            ("suppressed", |m| m.suppressed.to_string()),
            ("ike_initiated", |m| m.ike_initiated.to_string()),
            ("deletes_sent", |m| m.deletes_sent.to_string()),
            ("notifies_sent", |m| m.notifies_sent.to_string()),
            ("recovery_events", |m| m.recovery_events.to_string()),
        ];
        for (name, f) in rows {
            let _ = write!(o, "{name:<16}");
            for r in &self.runs {
                let _ = write!(o, "{:>26}", f(&r.metrics));
            }
            let _ = writeln!(o);
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "verdict: {}", self.verdict());
        o
    }

    /// One paragraph saying what happened in each run.
    pub fn verdict(&self) -> String {
        let mut parts = Vec::new();
        for r in &self.runs {
            let m = &r.metrics;
            let who = format!("With recovery {}", r.recovery);
            let s = if m.t_fault_ms.is_none() {
                format!("{who}, no fault was scheduled.")
            } else if m.t_first_drop_ms.is_none() {
                format!(
                    "{who}, no generator packet was dropped ({} lost a->b, {} b->a){}.",
                    m.lost.a_to_b,
                    m.lost.b_to_a,
                    if m.log_lines > 0 {
                        format!(
                            "; {} invalid-SPI log line(s), {} suppressed",
                            m.log_lines, m.suppressed
                        )
                    } else {
                        String::new()
                    }
                )
            } else {
                let det = match (m.t_detect_ms, m.t_fault_ms) {
                    (Some(d), Some(f)) => format!(
                        "the desync was detected {:.3} s after the fault ({} log line(s), {} suppressed)",
                        (d - f) / 1000.0,
                        m.log_lines,
                        m.suppressed
                    ),
                    _ => "no invalid-SPI event was seen".into(),
                };
                let act = match (m.t_action_ms, m.t_fault_ms) {
                    (Some(a), Some(f)) => format!(", acted on at +{:.3} s", (a - f) / 1000.0),
                    _ => ", no recovery action followed".into(),
                };
                let end = if m.recovered {
                    format!(
                        "; traffic flowed both ways again {:.3} s after the fault (longest gap {:.3} s; {} packets lost a->b, {} b->a{}).",
                        m.blackhole_ms.unwrap_or(0.0) / 1000.0,
                        m.longest_gap_ms / 1000.0,
                        m.lost.a_to_b,
                        m.lost.b_to_a,
                        if m.retired_spi_drops > 0 {
                            format!(", {} of them late packets for a retired SPI", m.retired_spi_drops)
                        } else {
                            String::new()
                        }
                    )
                } else {
                    format!(
                        "; traffic did NOT recover within the run ({} packets lost a->b, {} b->a).",
                        m.lost.a_to_b, m.lost.b_to_a
                    )
                };
                format!("{who}, {det}{act}{end}")
            };
            parts.push(s);
        }
        if let [on, off] = &self.runs[..] {
            let (a, b) = (&on.metrics, &off.metrics);
            if a.recovered && !b.recovered && b.t_first_drop_ms.is_some() {
                parts.push("Recovery made the difference.".into());
            } else if a.recovered == b.recovered && a.blackhole_ms == b.blackhole_ms {
                parts.push("The recovery setting made no difference here.".into());
            }
        }
        parts.join(" ")
    }

    /// The text report: summary, timelines with the log lines of both peers, counters.
    pub fn to_text(&self) -> String {
        let mut o = self.summary();
        for r in &self.runs {
            let _ = writeln!(o, "\n== timeline, recovery {} ==", r.recovery);
            for e in &r.timeline {
                let _ = writeln!(
                    o,
                    "{:>10.3}  {}  {:<16} {}",
                    e.t_ms / 1000.0,
                    e.peer,
                    e.kind,
                    e.text
                );
            }
            if r.metrics.timeline_truncated > 0 {
                let _ = writeln!(
                    o,
                    "   ... {} more entries left out",
                    r.metrics.timeline_truncated
                );
            }
            let _ = writeln!(o, "\n== counters (non-zero), recovery {} ==", r.recovery);
            for (k, c) in &r.counters {
                let nz: Vec<String> = c
                    .iter()
                    .filter(|(_, v)| **v != 0)
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect();
                let _ = writeln!(o, "{k:<9} {}", nz.join(" "));
            }
        }
        o
    }

    /// Delivered and dropped packets per bin and direction, runs stacked, marks drawn.
    pub fn to_svg(&self) -> String {
        const W: f64 = 960.0;
        const PH: f64 = 240.0;
        const L: f64 = 80.0;
        const R: f64 = 20.0;
        let h = 40.0 + PH * self.runs.len() as f64;
        let mut o = String::new();
        let _ = writeln!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            o,
            r#"<text x="{L}" y="20" font-size="14">{} (seed {}): packets per bin, delivered (solid) and dropped (dashed)</text>"#,
            xml(&self.scenario),
            self.seed
        );
        let colors = [("#1f77b4", "#d62728"), ("#2ca02c", "#ff7f0e")];
        for (k, r) in self.runs.iter().enumerate() {
            let top = 40.0 + PH * k as f64;
            let (y0, y1) = (top + PH - 40.0, top + 20.0);
            let p = &r.plot;
            let n = p.delivered[0].len().max(1);
            let ymax = p
                .delivered
                .iter()
                .chain(p.dropped.iter())
                .flat_map(|v| v.iter())
                .copied()
                .max()
                .unwrap_or(1)
                .max(1) as f64;
            let x = |i: f64| L + (W - L - R) * i / n as f64;
            // A->B above the middle axis, B->A mirrored below it.
            let mid = (y0 + y1) / 2.0;
            let y = |dir: usize, v: f64| {
                let h = (mid - y1) * v / ymax;
                if dir == 0 {
                    mid - h
                } else {
                    mid + h
                }
            };
            let _ = writeln!(
                o,
                r#"<text x="{L}" y="{}" font-size="12" font-weight="bold">recovery {}</text>"#,
                top + 12.0,
                xml(&r.recovery)
            );
            let _ = writeln!(
                o,
                r##"<line x1="{L}" y1="{y0}" x2="{}" y2="{y0}" stroke="#000"/><line x1="{L}" y1="{y0}" x2="{L}" y2="{y1}" stroke="#000"/>"##,
                W - R
            );
            let _ = writeln!(
                o,
                r#"<text x="{}" y="{}" text-anchor="end">a->b {ymax}</text>"#,
                L - 4.0,
                y1 + 4.0
            );
            let _ = writeln!(
                o,
                r##"<line x1="{L}" y1="{mid}" x2="{}" y2="{mid}" stroke="#999"/><text x="{}" y="{mid}" text-anchor="end">0</text><text x="{}" y="{y0}" text-anchor="end">b->a {ymax}</text>"##,
                W - R,
                L - 4.0,
                L - 4.0
            );
            let total_s = n as f64 * p.bin_ms / 1000.0;
            for t in 0..=10 {
                let xs = x(n as f64 * t as f64 / 10.0);
                let _ = writeln!(
                    o,
                    r#"<text x="{xs:.1}" y="{}" text-anchor="middle">{:.0} s</text>"#,
                    y0 + 14.0,
                    total_s * t as f64 / 10.0
                );
            }
            for (dir, (c_ok, c_drop)) in colors.iter().enumerate() {
                for (series, color, dash) in [
                    (&p.delivered[dir], *c_ok, ""),
                    (&p.dropped[dir], *c_drop, r#" stroke-dasharray="4 2""#),
                ] {
                    let pts: Vec<String> = series
                        .iter()
                        .enumerate()
                        .map(|(i, v)| format!("{:.1},{:.1}", x(i as f64 + 0.5), y(dir, *v as f64)))
                        .collect();
                    let _ = writeln!(
                        o,
                        r#"<polyline fill="none" stroke="{color}" stroke-width="1.5"{dash} points="{}"/>"#,
                        pts.join(" ")
                    );
                }
            }
            // Marks close together (fault, detect, action within a few ms) would print
            // their labels on top of each other: each label goes to the first row where
            // it clears the previous label's right end.
            let mut order: Vec<usize> = (0..p.marks.len()).collect();
            order.sort_by(|&a, &b| p.marks[a].0.total_cmp(&p.marks[b].0));
            let mut row_end: Vec<f64> = Vec::new();
            for k in order {
                let (t, label) = &p.marks[k];
                let xs = x(t / p.bin_ms.max(1e-9));
                let c = match label.as_str() {
                    "fault" => "#d62728",
                    "recovered" | "all recovered" => "#2ca02c",
                    _ => "#7f7f7f",
                };
                // Right of the line, or left of it near the right edge.
                let width = label_width(label);
                let (lx, left, anchor) = if xs + 2.0 + width <= W {
                    (xs + 2.0, xs + 2.0, "start")
                } else {
                    (xs - 2.0, xs - 2.0 - width, "end")
                };
                let row = row_end
                    .iter()
                    .position(|&e| e + 4.0 <= left)
                    .unwrap_or(row_end.len());
                if row == row_end.len() {
                    row_end.push(0.0);
                }
                row_end[row] = left + width;
                let _ = writeln!(
                    o,
                    r#"<line x1="{xs:.1}" y1="{y1}" x2="{xs:.1}" y2="{y0}" stroke="{c}" stroke-dasharray="2 2"/><text x="{lx:.1}" y="{}" fill="{c}" text-anchor="{anchor}">{}</text>"#,
                    y1 + 10.0 + 12.0 * row as f64,
                    xml(label)
                );
            }
            let ly = y0 + 28.0;
            for (i, (label, c)) in [
                ("delivered a->b", colors[0].0),
                ("dropped a->b", colors[0].1),
                ("delivered b->a", colors[1].0),
                ("dropped b->a", colors[1].1),
            ]
            .iter()
            .enumerate()
            {
                let lx = L + 150.0 * i as f64;
                let _ = writeln!(
                    o,
                    r#"<rect x="{lx}" y="{}" width="10" height="10" fill="{c}"/><text x="{}" y="{ly}">{label}</text>"#,
                    ly - 9.0,
                    lx + 14.0
                );
            }
        }
        o.push_str("</svg>\n");
        o
    }
}

/// Width of a mark label at font-size 11, px (a generous average glyph width: labels are
/// short ASCII words).
fn label_width(s: &str) -> f64 {
    6.5 * s.chars().count() as f64
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes report.json, report.txt, plot.svg, underlay.pcap (first run; one
/// `underlay-<recovery>.pcap` per run), `esp_sa` and `ikev2_decryption_table` (Wireshark
/// UATs, named as in a Wireshark profile directory) into `dir`.
pub fn write_outputs(dir: &Path, out: &Outcome) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut put = |name: &str, data: &[u8]| -> std::io::Result<()> {
        std::fs::write(dir.join(name), data)?;
        written.push(name.to_string());
        Ok(())
    };
    put("report.json", out.report.to_json().as_bytes())?;
    put("report.txt", out.report.to_text().as_bytes())?;
    put("plot.svg", out.report.to_svg().as_bytes())?;
    if let Some(p) = out.pcaps.first() {
        put("underlay.pcap", &p.to_bytes())?;
    }
    if out.pcaps.len() > 1 {
        for (r, p) in out.report.runs.iter().zip(&out.pcaps) {
            put(&format!("underlay-{}.pcap", r.recovery), &p.to_bytes())?;
        }
    }
    let mut uat = String::new();
    for l in &out.uat {
        uat.push_str(l);
        uat.push('\n');
    }
    put("esp_sa", uat.as_bytes())?;
    let mut ike = String::new();
    for l in &out.ike_uat {
        ike.push_str(l);
        ike.push('\n');
    }
    put("ikev2_decryption_table", ike.as_bytes())?;
    Ok(written)
}
