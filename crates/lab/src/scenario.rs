//! Scenario files: topology, link model, traffic, fault schedule, recovery and liveness
//! settings, run length. See `docs/lab.md` for the format.

use serde::Deserialize;

/// Scenarios shipped with the lab (name, TOML text), embedded so the binary works anywhere.
pub const BUILTIN: &[(&str, &str)] = &[
    ("peer-reboot", include_str!("../scenarios/peer-reboot.toml")),
    (
        "child-sa-lost",
        include_str!("../scenarios/child-sa-lost.toml"),
    ),
    (
        "dynamic-peer",
        include_str!("../scenarios/dynamic-peer.toml"),
    ),
    ("spi-flood", include_str!("../scenarios/spi-flood.toml")),
    (
        "late-packets",
        include_str!("../scenarios/late-packets.toml"),
    ),
    ("ipv6", include_str!("../scenarios/ipv6.toml")),
    ("nat-t", include_str!("../scenarios/nat-t.toml")),
    (
        "spoofed-notify",
        include_str!("../scenarios/spoofed-notify.toml"),
    ),
    ("one-way-cut", include_str!("../scenarios/one-way-cut.toml")),
    (
        "rekey-early-switch",
        include_str!("../scenarios/rekey-early-switch.toml"),
    ),
    (
        "rekey-collision",
        include_str!("../scenarios/rekey-collision.toml"),
    ),
    ("hub-reboot", include_str!("../scenarios/hub-reboot.toml")),
    ("nat-rebind", include_str!("../scenarios/nat-rebind.toml")),
];

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not a shipped name and no such file.
    #[error("no scenario or file named {0:?} (try `esplab lab list`)")]
    NotFound(String),
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("{name}: {source}")]
    Parse {
        /// Scenario name or path.
        name: String,
        /// The parser's message (with line and column).
        source: toml::de::Error,
    },
    /// A time (seconds or milliseconds) that is not finite or not in range: such values
    /// reach `Duration::from_secs_f64` or the link's random delay, which panic on them.
    #[error("{name}: {key} = {value} must be a number of {unit} in [0, {max}]")]
    BadTime {
        /// Scenario name or path.
        name: String,
        /// The key (`link.jitter_ms`, `fault[2].duration_s`, ...).
        key: String,
        /// The value given.
        value: f64,
        /// `seconds` or `milliseconds`.
        unit: &'static str,
        /// The largest value accepted.
        max: f64,
    },
    /// A value out of range.
    #[error("{name}: {msg}")]
    Invalid {
        /// Scenario name or path.
        name: String,
        /// What is wrong.
        msg: String,
    },
}

/// Which runs to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryMode {
    /// Recovery (invalid-SPI rule 2) enabled.
    On,
    /// Vendor default: disabled.
    Off,
    /// One run each, side by side.
    #[default]
    Both,
}

impl RecoveryMode {
    /// The runs to make: `true` = recovery on.
    pub fn runs(self) -> Vec<bool> {
        match self {
            RecoveryMode::On => vec![true],
            RecoveryMode::Off => vec![false],
            RecoveryMode::Both => vec![true, false],
        }
    }
}

/// A peer of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    /// Peer A (198.18.0.1, protects 198.19.1.0/24).
    A,
    /// Peer B (198.18.0.2, protects 198.19.2.0/24).
    B,
}

impl Side {
    /// 0 for A, 1 for B.
    pub fn idx(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// Underlay address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// 198.18.0.0/15 (RFC 2544 benchmarking).
    #[default]
    Ipv4,
    /// 2001:2::/48 (RFC 5180 benchmarking).
    Ipv6,
}

/// Direction of a one-way fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// From A to B.
    AToB,
    /// From B to A.
    BToA,
}

/// Peers and addressing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topology {
    /// Underlay family.
    pub family: Family,
    /// Who starts the IKE SA at time 0.
    pub initiator: Side,
    /// B knows A only as a dynamic (responder-only, any address) peer.
    pub b_dynamic: bool,
    /// B sits behind a NAT (public address 198.18.1.2, port-preserving until rebound).
    pub nat_b: bool,
    /// IKE proposal.
    pub ike_proposal: String,
    /// ESP proposal.
    pub esp_proposal: String,
    /// Pre-shared key.
    pub psk: String,
    /// CHILD SA lifetime in seconds (hard; rekey 1/3 earlier); none = no lifetime.
    pub child_lifetime_s: Option<f64>,
    /// How long a replaced inbound SA still decrypts, seconds.
    pub child_linger_s: Option<f64>,
    /// How long a removed SPI counts as "retired" rather than unknown, seconds.
    pub retired_grace_s: f64,
    /// Hub and spokes instead of A and B: A is a hub with this many spokes (B stands for
    /// every spoke); 0 = the two-peer topology. IPv4 only, no NAT.
    pub spokes: u32,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            family: Family::Ipv4,
            initiator: Side::A,
            b_dynamic: false,
            nat_b: false,
            ike_proposal: "aes128gcm16-prfsha256-x25519".into(),
            esp_proposal: "aes128gcm16".into(),
            psk: "esplab desync lab".into(),
            child_lifetime_s: None,
            child_linger_s: None,
            retired_grace_s: 10.0,
            spokes: 0,
        }
    }
}

/// The network between the peers (both directions alike).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Link {
    /// One-way delay, ms.
    pub delay_ms: f64,
    /// Uniform extra delay 0..jitter, ms.
    pub jitter_ms: f64,
    /// Loss probability per datagram.
    pub loss: f64,
    /// Probability that a datagram is held back `reorder_ms` (reordering).
    pub reorder: f64,
    /// Hold-back of a reordered datagram, ms.
    pub reorder_ms: f64,
    /// Probability that a datagram is duplicated.
    pub duplicate: f64,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            delay_ms: 5.0,
            jitter_ms: 0.0,
            loss: 0.0,
            reorder: 0.0,
            reorder_ms: 20.0,
            duplicate: 0.0,
        }
    }
}

/// The traffic generator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Traffic {
    /// Packets per second in each direction.
    pub rate: u32,
    /// When it starts, seconds (after the IKE SA is up).
    pub start_s: f64,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            rate: 100,
            start_s: 2.0,
        }
    }
}

/// Liveness (DPD) settings of both peers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dpd {
    /// Probe after this long without anything from the peer, seconds; none = off.
    pub delay_s: Option<f64>,
    /// `clear` or `restart` (static peers initiate again).
    pub action: DpdActionSpec,
}

/// What a dead peer leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DpdActionSpec {
    /// Remove the SAs.
    #[default]
    Clear,
    /// Remove them and initiate again.
    Restart,
}

/// Invalid-SPI policy settings (both peers; `--recovery` sets the rule-2 switch).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// `delete`, `notify`, `both` or `none`: what goes over an existing IKE SA.
    pub on_invalid_spi: String,
    /// At most one recovery action per peer per this long, seconds.
    pub hold_down_s: f64,
    /// Invalid-SPI log lines: at most one per flow per this long, seconds.
    pub log_per_flow_s: f64,
    /// ... and at most this many per minute overall.
    pub log_global_max: u32,
    /// `restart` (re-create a CHILD SA the peer deleted, static peers only, as
    /// strongSwan's `close_action = start`) or `none`.
    pub on_peer_delete: String,
    /// Recovery actions (Delete/Notify sent, IKE initiated) per minute per peer, overall.
    pub global_per_minute: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            on_invalid_spi: "delete".into(),
            hold_down_s: 10.0,
            log_per_flow_s: 60.0,
            log_global_max: 10,
            on_peer_delete: "restart".into(),
            global_per_minute: 60,
        }
    }
}

/// What kind of spoofed IKE message the third host sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpoofKind {
    /// Unprotected INFORMATIONAL with N(INVALID_SPI).
    InvalidSpi,
    /// Unprotected INFORMATIONAL with N(INVALID_IKE_SPI).
    InvalidIkeSpi,
    /// Unprotected INFORMATIONAL with a Delete(ESP) payload.
    Delete,
}

/// One scheduled fault.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FaultKind {
    /// Replace the peer's agent with a fresh one: all state lost.
    Restart {
        /// Which peer.
        peer: Side,
    },
    /// Forget every CHILD SA (node `clear_all`) without telling the other side.
    ClearChild {
        /// Which peer.
        peer: Side,
    },
    /// Rekey the CHILD SA now (started by `peer`).
    Rekey {
        /// Which peer.
        peer: Side,
    },
    /// Drop the next `count` IKE messages sent by `from`.
    DropIke {
        /// Sender.
        from: Side,
        /// How many.
        count: u32,
        /// Only messages of this exchange (`IKE_SA_INIT`, `IKE_AUTH`, `CREATE_CHILD_SA`,
        /// `INFORMATIONAL`); any when absent.
        #[serde(default)]
        exchange: Option<String>,
        /// Only responses (`true`) or only requests (`false`); both when absent.
        #[serde(default)]
        response: Option<bool>,
    },
    /// Arm the early-switch rekey bug on `peer`: when it next installs a rekeyed CHILD SA
    /// as the rekey responder, it sends on the new outbound SA at once instead of waiting
    /// for the initiator to install its inbound SA (make-before-break broken).
    EarlySwitch {
        /// The buggy peer.
        peer: Side,
    },
    /// Delay the next `count` IKE messages sent by `from`.
    DelayIke {
        /// Sender.
        from: Side,
        /// How many.
        count: u32,
        /// Extra delay, ms.
        delay_ms: f64,
        /// Only messages of this exchange; any when absent.
        #[serde(default)]
        exchange: Option<String>,
    },
    /// Delay the next `count` ESP packets sent by `from` (late packets).
    DelayEsp {
        /// Sender.
        from: Side,
        /// How many.
        count: u32,
        /// Extra delay, ms.
        delay_ms: f64,
    },
    /// Drop everything in one direction for `duration_s`.
    Cut {
        /// Direction.
        dir: Direction,
        /// Seconds.
        duration_s: f64,
    },
    /// The NAT in front of B picks new public ports (also spelled `rebind`).
    #[serde(alias = "rebind")]
    NatRebind,
    /// The third host sends ESP with random SPIs to `to`.
    Flood {
        /// Target.
        to: Side,
        /// Packets per second.
        rate: u32,
        /// Seconds.
        duration_s: f64,
    },
    /// The third host sends unprotected IKE notifications to `to`, spoofing the other
    /// peer's address.
    Spoof {
        /// Target.
        to: Side,
        /// Message kind.
        kind: SpoofKind,
        /// How many.
        count: u32,
        /// Between two, ms.
        interval_ms: f64,
    },
}

/// A fault at a time.
#[derive(Debug, Clone, Deserialize)]
pub struct Fault {
    /// Seconds from the start of the run.
    pub at: f64,
    /// What happens.
    #[serde(flatten)]
    pub kind: FaultKind,
}

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name (used in the output directory).
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Expected outcome, in words (printed in the report).
    #[serde(default)]
    pub expect: String,
    /// Run length, seconds.
    #[serde(default = "default_duration")]
    pub duration_s: f64,
    /// Which runs by default.
    #[serde(default)]
    pub recovery: RecoveryMode,
    /// Peers and addressing.
    #[serde(default)]
    pub topology: Topology,
    /// The link model.
    #[serde(default)]
    pub link: Link,
    /// The traffic generator.
    #[serde(default)]
    pub traffic: Traffic,
    /// Liveness.
    #[serde(default)]
    pub dpd: Dpd,
    /// Invalid-SPI policy.
    #[serde(default)]
    pub policy: Policy,
    /// The fault schedule.
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
}

fn default_duration() -> f64 {
    120.0
}

impl Scenario {
    /// Parses scenario TOML; `name` is used in error messages.
    pub fn from_toml(name: &str, text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            name: name.into(),
            source,
        })?;
        s.validate(name)?;
        Ok(s)
    }

    /// A shipped scenario by name, or a `.toml` file by path.
    pub fn load(name_or_path: &str) -> Result<Self, ScenarioError> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::from_toml(name_or_path, text);
        }
        let p = std::path::Path::new(name_or_path);
        if p.exists() {
            let text = std::fs::read_to_string(p).map_err(|source| ScenarioError::Read {
                path: name_or_path.into(),
                source,
            })?;
            return Self::from_toml(name_or_path, &text);
        }
        Err(ScenarioError::NotFound(name_or_path.into()))
    }

    fn validate(&self, name: &str) -> Result<(), ScenarioError> {
        let bad = |msg: &str| {
            Err(ScenarioError::Invalid {
                name: name.into(),
                msg: msg.into(),
            })
        };
        if !(self.duration_s > 0.0 && self.duration_s <= 86_400.0) {
            return bad("duration_s must be in (0, 86400]");
        }
        self.validate_times(name)?;
        if self.traffic.rate > 100_000 {
            return bad("traffic.rate above 100000/s");
        }
        for p in [self.link.loss, self.link.reorder, self.link.duplicate] {
            if !(0.0..=1.0).contains(&p) {
                return bad("link probabilities must be in [0, 1]");
            }
        }
        if self.link.delay_ms < 0.0 || self.link.jitter_ms < 0.0 || self.link.reorder_ms < 0.0 {
            return bad("link delays must not be negative");
        }
        for f in &self.faults {
            if !(f.at >= 0.0 && f.at <= self.duration_s) {
                return bad("fault.at must be inside the run");
            }
        }
        if !["delete", "notify", "both", "none"].contains(&self.policy.on_invalid_spi.as_str()) {
            return bad("policy.on_invalid_spi must be delete, notify, both or none");
        }
        for f in &self.faults {
            if let FaultKind::DropIke {
                exchange: Some(x), ..
            }
            | FaultKind::DelayIke {
                exchange: Some(x), ..
            } = &f.kind
            {
                if exchange_number(x).is_none() {
                    return bad(
                        "exchange must be IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA or INFORMATIONAL",
                    );
                }
            }
        }
        if !["restart", "none"].contains(&self.policy.on_peer_delete.as_str()) {
            return bad("policy.on_peer_delete must be restart or none");
        }
        if self.topology.spokes > 0 {
            let t = &self.topology;
            if t.spokes > MAX_SPOKES {
                return bad("topology.spokes above 4000");
            }
            if t.family != Family::Ipv4 || t.nat_b || t.b_dynamic {
                return bad("topology.spokes needs an IPv4 underlay without nat_b and b_dynamic");
            }
            if !self.faults.iter().all(|f| {
                matches!(
                    f.kind,
                    FaultKind::Restart { .. } | FaultKind::ClearChild { .. }
                )
            }) {
                return bad(
                    "with topology.spokes only restart and clear-child faults are modelled",
                );
            }
        }
        Ok(())
    }

    /// Every time value is finite, not negative and at most [`MAX_TIME_S`]: they become
    /// `Duration`s (`Duration::from_secs_f64` panics on NaN, negative and huge values) or
    /// bounds of a random delay (an infinite range panics).
    fn validate_times(&self, name: &str) -> Result<(), ScenarioError> {
        let mut secs: Vec<(String, f64)> = vec![
            ("duration_s".into(), self.duration_s),
            (
                "topology.retired_grace_s".into(),
                self.topology.retired_grace_s,
            ),
            ("traffic.start_s".into(), self.traffic.start_s),
            ("policy.hold_down_s".into(), self.policy.hold_down_s),
            ("policy.log_per_flow_s".into(), self.policy.log_per_flow_s),
        ];
        let opt = [
            ("topology.child_lifetime_s", self.topology.child_lifetime_s),
            ("topology.child_linger_s", self.topology.child_linger_s),
            ("dpd.delay_s", self.dpd.delay_s),
        ];
        secs.extend(
            opt.iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v))),
        );
        let mut millis: Vec<(String, f64)> = vec![
            ("link.delay_ms".into(), self.link.delay_ms),
            ("link.jitter_ms".into(), self.link.jitter_ms),
            ("link.reorder_ms".into(), self.link.reorder_ms),
        ];
        for (i, f) in self.faults.iter().enumerate() {
            secs.push((format!("fault[{i}].at"), f.at));
            match f.kind {
                FaultKind::DelayIke { delay_ms, .. } | FaultKind::DelayEsp { delay_ms, .. } => {
                    millis.push((format!("fault[{i}].delay_ms"), delay_ms))
                }
                FaultKind::Cut { duration_s, .. } | FaultKind::Flood { duration_s, .. } => {
                    secs.push((format!("fault[{i}].duration_s"), duration_s))
                }
                FaultKind::Spoof { interval_ms, .. } => {
                    millis.push((format!("fault[{i}].interval_ms"), interval_ms))
                }
                _ => {}
            }
        }
        let check = |key: String, value: f64, unit: &'static str, max: f64| {
            // `contains` is false for NaN, so NaN is refused too.
            if (0.0..=max).contains(&value) {
                Ok(())
            } else {
                Err(ScenarioError::BadTime {
                    name: name.into(),
                    key,
                    value,
                    unit,
                    max,
                })
            }
        };
        for (k, v) in secs {
            check(k, v, "seconds", MAX_TIME_S)?;
        }
        for (k, v) in millis {
            check(k, v, "milliseconds", MAX_TIME_S * 1000.0)?;
        }
        // A zero lifetime would rekey at once, forever; `none` is how to switch it off.
        if self.topology.child_lifetime_s == Some(0.0) {
            return Err(ScenarioError::Invalid {
                name: name.into(),
                msg: "topology.child_lifetime_s must be more than 0 (omit it for none)".into(),
            });
        }
        Ok(())
    }

    /// Time of the first fault, seconds (the reference of the metrics).
    pub fn t_fault(&self) -> Option<f64> {
        self.faults
            .iter()
            .map(|f| f.at)
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))))
    }
}

/// Scenarios of the table not shipped yet, with the reason (all are shipped now).
pub const NOT_YET: &[(&str, &str)] = &[];

/// The largest time value a scenario accepts, seconds (one year; runs are at most a day).
pub const MAX_TIME_S: f64 = 365.0 * 86_400.0;

/// Most spokes of a hub topology (their protected /29 nets fit in 198.19.128.0/17, their
/// underlay addresses in 198.18.16.0/19).
pub const MAX_SPOKES: u32 = 4000;

/// RFC 7296 §3.1 exchange type number of an exchange name.
pub fn exchange_number(name: &str) -> Option<u8> {
    match name {
        "IKE_SA_INIT" => Some(34),
        "IKE_AUTH" => Some(35),
        "CREATE_CHILD_SA" => Some(36),
        "INFORMATIONAL" => Some(37),
        _ => None,
    }
}
