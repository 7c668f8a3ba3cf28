//! Invalid-SPI recovery policy: configuration (behaviour comes with the recovery issue).
//!
//! The vendor behaviour being reproduced (docs/recovery.md, `shared/seed/NOTES.md`):
//! 1. unknown SPI from a peer we hold an IKE SA with → INFORMATIONAL Delete(ESP,[spi]) and/or
//!    N(INVALID_SPI) over that IKE SA (always, whatever the recovery flag);
//! 2. no IKE SA, the sender is a statically configured peer, recovery on → new IKE SA with
//!    INITIAL_CONTACT, then the Delete over it;
//! 3. the sender is not a static peer → impossible; a rate-limited event says why.

use std::collections::BTreeMap;
use std::time::Duration;

/// What to send over an existing IKE SA for an unknown SPI (RFC 7296 §1.5, §3.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnInvalidSpi {
    /// INFORMATIONAL with Delete(ESP, [spi]) — strongSwan drops its stale SA on exactly this.
    #[default]
    Delete,
    /// INFORMATIONAL with N(INVALID_SPI, spi).
    Notify,
    /// Both payloads in one INFORMATIONAL.
    Both,
    /// Nothing (count and log only).
    None,
}

/// What to do when liveness (DPD) declares a peer dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpdAction {
    /// Remove the IKE SA and its CHILD SAs.
    #[default]
    Clear,
    /// Remove them and initiate again (static peers only).
    Restart,
}

/// Recovery settings of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecovery {
    /// Rule 1: what to send over an existing IKE SA.
    pub on_invalid_spi: OnInvalidSpi,
    /// Rule 2: build an IKE SA to a static peer that has none (default off, as vendors:
    /// an attacker could make us initiate).
    pub invalid_spi_recovery: bool,
    /// Liveness probe after this long without anything (IKE or ESP) from the peer.
    pub dpd_delay: Option<Duration>,
    /// What to do with a dead peer.
    pub dpd_action: DpdAction,
}

impl Default for PeerRecovery {
    fn default() -> Self {
        Self {
            on_invalid_spi: OnInvalidSpi::Delete,
            invalid_spi_recovery: false,
            dpd_delay: None,
            dpd_action: DpdAction::Clear,
        }
    }
}

/// Node-wide recovery settings and per-peer overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// Settings of peers not listed in `peers`.
    pub default: PeerRecovery,
    /// Per-peer settings by peer name.
    pub peers: BTreeMap<String, PeerRecovery>,
    /// At most one action (Delete/Notify, or IKE initiation) per SPI / per peer per this long.
    pub hold_down: Duration,
    /// Ceiling of the exponential backoff after failed recovery initiations.
    pub max_backoff: Duration,
    /// Global budget: recovery actions per minute across all peers.
    pub global_per_minute: u32,
    /// Largest number of SPIs / sources tracked at once (bounded tables).
    pub max_tracked: usize,
    /// Rule 3 option: send an unprotected INVALID_SPI hint to non-static sources (off).
    pub unprotected_hint: bool,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            default: PeerRecovery::default(),
            peers: BTreeMap::new(),
            hold_down: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
            global_per_minute: 60,
            max_tracked: 4096,
            unprotected_hint: false,
        }
    }
}

impl RecoveryConfig {
    /// The settings for the peer named `name`.
    pub fn for_peer(&self, name: &str) -> &PeerRecovery {
        self.peers.get(name).unwrap_or(&self.default)
    }
}

// ---------------------------------------------------------------------------------------
// Behaviour: the decision engine. Sans-IO and IKE-agnostic: the agent tells it what
// happened (unknown SPI, IKE SA up/failed, ...) and carries out the actions it returns.
// ---------------------------------------------------------------------------------------

use serde::Serialize;
use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Why a recovery step was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuppressWhy {
    /// Hold-down or backoff of this SPI / peer still running.
    RateLimit,
    /// The sender is only known as a dynamic (responder-only) peer: we cannot initiate.
    DynamicPeer,
    /// The sender is not a configured peer at all.
    NotConfigured,
    /// The global per-minute budget is spent.
    Budget,
    /// The sender is a static peer but `invalid_spi_recovery` is off.
    RecoveryOff,
}

impl SuppressWhy {
    /// Stable kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressWhy::RateLimit => "rate-limit",
            SuppressWhy::DynamicPeer => "dynamic peer",
            SuppressWhy::NotConfigured => "not a configured peer",
            SuppressWhy::Budget => "global budget",
            SuppressWhy::RecoveryOff => "recovery disabled",
        }
    }
}

/// What a recovery step was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryKind {
    /// A new (not held-down) unknown SPI was seen.
    InvalidSpiSeen,
    /// Delete(ESP, [spi]) queued over an IKE SA.
    DeleteSent,
    /// N(INVALID_SPI) queued over an IKE SA.
    NotifySent,
    /// An IKE SA (with INITIAL_CONTACT) was initiated to recover.
    IkeInitiated,
    /// The IKE SA with a recovering peer came up.
    IkeEstablished,
    /// A recovery initiation failed; backoff doubled.
    RecoveryFailed,
    /// A step was not taken, and why.
    Suppressed {
        /// Why.
        why: SuppressWhy,
    },
    /// The peer told us (protected Delete or INVALID_SPI) that an SA we send on is stale.
    StaleSaDeletedOnPeerRequest,
    /// A liveness check was sent because of an unprotected notification.
    LivenessCheck,
    /// An unprotected one-way N(INVALID_SPI) hint went to a non-static sender.
    HintSent,
    /// The peer was declared dead (DPD / retransmissions).
    PeerDead,
    /// The peer deleted the IKE SA and it did not come back: initiated again
    /// (`on_peer_delete = "restart"`).
    IkeRestarted,
}

/// One recovery step, for logs and `follow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryEvent {
    /// When.
    pub at: Instant,
    /// What.
    pub kind: RecoveryKind,
    /// The configured peer concerned, if any (shared with the engine's peer table: no
    /// string is copied per event).
    pub peer: Option<Arc<str>>,
    /// The sender address concerned, if any.
    pub src: Option<IpAddr>,
    /// The SPI concerned, if any.
    pub spi: Option<u32>,
}

/// The vendor-style log line of a recovery step.
pub fn recovery_log_line(e: &RecoveryEvent) -> String {
    let mut ctx = String::new();
    if let Some(p) = &e.peer {
        ctx.push_str(&format!(" peer={p}"));
    }
    if let Some(a) = e.src {
        ctx.push_str(&format!(" srcaddr={a}"));
    }
    if let Some(s) = e.spi {
        ctx.push_str(&format!(" spi=0x{s:08X}"));
    }
    let (sev, tag, what) = match e.kind {
        RecoveryKind::InvalidSpiSeen => (
            5,
            "INV_SPI_RECOVERY",
            "unknown SPI, recovery evaluated".to_string(),
        ),
        RecoveryKind::DeleteSent => (
            5,
            "INV_SPI_RECOVERY",
            "sent INFORMATIONAL Delete(ESP)".to_string(),
        ),
        RecoveryKind::NotifySent => (
            5,
            "INV_SPI_RECOVERY",
            "sent INFORMATIONAL N(INVALID_SPI)".to_string(),
        ),
        RecoveryKind::IkeInitiated => (
            5,
            "INV_SPI_RECOVERY",
            "no IKE SA, initiating IKE SA with INITIAL_CONTACT".to_string(),
        ),
        RecoveryKind::IkeEstablished => (
            5,
            "INV_SPI_RECOVERY",
            "IKE SA established, stale SPIs reported".to_string(),
        ),
        RecoveryKind::RecoveryFailed => (
            4,
            "INV_SPI_RECOVERY",
            "recovery initiation failed, backing off".to_string(),
        ),
        RecoveryKind::Suppressed { why } => (
            6,
            "INV_SPI_RECOVERY",
            format!("recovery suppressed: {}", why.as_str()),
        ),
        RecoveryKind::StaleSaDeletedOnPeerRequest => (
            5,
            "INV_SPI_RECOVERY",
            "peer reported stale SA, pair removed".to_string(),
        ),
        RecoveryKind::LivenessCheck => (
            6,
            "INV_SPI_RECOVERY",
            "unprotected notification, liveness check sent".to_string(),
        ),
        RecoveryKind::HintSent => (
            6,
            "INV_SPI_RECOVERY",
            "sent unprotected INFORMATIONAL N(INVALID_SPI) hint".to_string(),
        ),
        RecoveryKind::PeerDead => (4, "DPD", "peer declared dead".to_string()),
        RecoveryKind::IkeRestarted => (
            5,
            "IKE_RESTART",
            "peer deleted the IKE SA, initiating it again".to_string(),
        ),
    };
    format!("%CRYPTO-{sev}-{tag}: {what}{ctx}")
}

/// Recovery counters (exact, never rate-limited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryStats {
    /// Unknown-SPI packets handed to the recovery logic.
    pub invalid_spi_packets: u64,
    /// Delete(ESP) sent.
    pub deletes_sent: u64,
    /// N(INVALID_SPI) sent.
    pub notifies_sent: u64,
    /// IKE SAs initiated for recovery.
    pub ike_initiated: u64,
    /// Recovery IKE SAs that came up.
    pub ike_established: u64,
    /// Recovery initiations that failed.
    pub recovery_failed: u64,
    /// Steps suppressed (hold-down, budget, not possible).
    pub recovery_suppressed: u64,
    /// Pairs removed because the peer reported them stale.
    pub stale_sa_deleted: u64,
    /// SPIs in a peer's protected Delete(ESP) naming no SA of ours (ignored, RFC 7296
    /// §1.4.1).
    pub unknown_spi_deletes: u64,
    /// IKE SAs initiated again after the peer deleted one (`on_peer_delete = "restart"`).
    pub ike_restarts: u64,
    /// Liveness checks sent because of unprotected notifications.
    pub liveness_checks: u64,
    /// Peers declared dead.
    pub peers_dead: u64,
    /// Unprotected N(INVALID_SPI) hints sent (`unprotected_hint`).
    pub hints_sent: u64,
}

/// Per-peer recovery state as shown by `esplab show recovery`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerRecoveryStatus {
    /// Peer name.
    pub peer: String,
    /// Static address, if any (`None` = dynamic).
    pub address: Option<IpAddr>,
    /// `idle`, `initiating` or `backoff`.
    pub state: &'static str,
    /// Rule 2 enabled.
    pub invalid_spi_recovery: bool,
    /// Rule 1 action.
    pub on_invalid_spi: &'static str,
    /// Seconds since the last recovery initiation.
    pub last_initiation_secs_ago: Option<f64>,
    /// Seconds before another initiation is allowed (hold-down / backoff).
    pub hold_down_remaining_secs: f64,
    /// Current backoff.
    pub backoff_secs: f64,
    /// Consecutive failed initiations.
    pub failures: u32,
    /// Stale SPIs waiting for the new IKE SA.
    pub pending_spis: Vec<String>,
    /// The peer deleted the IKE SA and it is to be initiated again until it is up
    /// (`on_peer_delete = "restart"`).
    pub restart_pending: bool,
}

impl OnInvalidSpi {
    /// Config-file name.
    pub fn as_str(self) -> &'static str {
        match self {
            OnInvalidSpi::Delete => "delete",
            OnInvalidSpi::Notify => "notify",
            OnInvalidSpi::Both => "both",
            OnInvalidSpi::None => "none",
        }
    }
}

/// A map bounded to `cap` entries keyed with a per-process random hash seed (keys are
/// wire-controlled: SPIs, source addresses). When full, expired entries go first, then the
/// oldest eighth at once.
///
/// O(1) amortised and allocation-free once grown: a random-SPI flood makes one new entry
/// per packet, so eviction must not scan the map. Next to the map, a ring holds every
/// admission in order as `(key, generation)`; an entry of the ring whose generation is no
/// longer the key's in the map is stale (the key was admitted again, or evicted) and is
/// skipped. The clock is monotonic (`Instant`), so the ring is oldest-first: the expired
/// entries are a prefix of it, and the oldest ones are at its front.
#[derive(Debug)]
struct Bounded<K: Hash + Eq + Copy> {
    /// Key → (last admission, generation of its live ring entry).
    map: HashMap<K, (Instant, u64), RandomState>,
    /// Admissions, oldest first; at most `2 * cap` long (compacted when it gets there).
    ring: VecDeque<(K, u64)>,
    next_gen: u64,
    cap: usize,
}

impl<K: Hash + Eq + Copy> Bounded<K> {
    fn new(cap: usize) -> Self {
        Bounded {
            map: HashMap::with_hasher(RandomState::new()),
            ring: VecDeque::new(),
            next_gen: 0,
            cap: cap.max(1),
        }
    }

    /// True (and the entry refreshed) when `key` was not seen within `hold`.
    fn admit(&mut self, now: Instant, key: K, hold: Duration) -> bool {
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            self.make_room(now, hold);
        }
        let gen = self.next_gen;
        match self.map.entry(key) {
            Entry::Occupied(mut o) => {
                if now.saturating_duration_since(o.get().0) < hold {
                    return false;
                }
                *o.get_mut() = (now, gen);
            }
            Entry::Vacant(v) => {
                v.insert((now, gen));
            }
        }
        self.next_gen += 1;
        if self.ring.len() >= 2 * self.cap {
            // At least `cap` stale entries go (the map holds at most `cap` live ones), so
            // this O(cap) pass runs at most once per `cap` admissions.
            let map = &self.map;
            self.ring
                .retain(|(k, g)| map.get(k).is_some_and(|e| e.1 == *g));
        }
        self.ring.push_back((key, gen));
        true
    }

    /// Removes the oldest live entry if `evict(admitted at)` says so; stale ring entries
    /// in front of it go too. Returns the removed entry's time (`None`: kept, or empty).
    /// One hash per ring entry looked at (a flood evicts about one entry per new key).
    fn pop_oldest_if(&mut self, evict: impl Fn(Instant) -> bool) -> Option<Instant> {
        while let Some((k, g)) = self.ring.pop_front() {
            let Entry::Occupied(o) = self.map.entry(k) else {
                continue;
            };
            let t = o.get().0;
            if o.get().1 != g {
                // Stale: the key was admitted again since, its live entry is further back.
                continue;
            }
            if !evict(t) {
                self.ring.push_front((k, g));
                return None;
            }
            o.remove();
            return Some(t);
        }
        None
    }

    /// The map is full and a new key comes: forget the expired entries; if it is still
    /// full, the oldest eighth (`cap / 8 + 1` entries, and those admitted at the same instant as the
    /// last of them), so this runs once per `cap / 8` new keys in a flood, not per packet.
    fn make_room(&mut self, now: Instant, hold: Duration) {
        while self
            .pop_oldest_if(|t| now.saturating_duration_since(t) >= hold)
            .is_some()
        {}
        if self.map.len() < self.cap {
            return;
        }
        let n = (self.cap / 8).min(self.map.len() - 1) + 1;
        let mut cut = None;
        for _ in 0..n {
            cut = self.pop_oldest_if(|_| true);
        }
        if let Some(c) = cut {
            while self.pop_oldest_if(|t| t <= c).is_some() {}
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Key of the per-SPI hold-down table: (sender, SPI).
///
/// Hashed as one fixed-size write instead of the derived field-by-field hash (the `IpAddr`
/// discriminant, the octets' length prefix and bytes, the SPI: four writes, 25 bytes, for
/// IPv4): an unknown-SPI flood makes one new key per packet, and SipHash's cost is in its
/// rounds per 8 bytes and per write. Injective per family, and the two families write
/// different lengths (8 and 20 bytes), which SipHash's final block includes: the seed
/// alone still decides the buckets (RandomState, keys are wire-controlled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SpiKey(IpAddr, u32);

impl Hash for SpiKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self.0 {
            IpAddr::V4(a) => h.write_u64(u64::from(a.to_bits()) << 32 | u64::from(self.1)),
            IpAddr::V6(a) => {
                let mut b = [0u8; 20];
                b[..16].copy_from_slice(&a.octets());
                b[16..].copy_from_slice(&self.1.to_be_bytes());
                h.write(&b);
            }
        }
    }
}

/// Key of the per-source tables: the sender's address, hashed as one write of 4 or 16
/// bytes (see [`SpiKey`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SrcKey(IpAddr);

impl Hash for SrcKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self.0 {
            IpAddr::V4(a) => h.write_u32(a.to_bits()),
            IpAddr::V6(a) => h.write_u128(a.to_bits()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Initiating,
}

#[derive(Debug)]
struct PeerState {
    name: Arc<str>,
    addr: Option<IpAddr>,
    /// Where its current IKE SA is (learnt from the IKE SA, also for dynamic peers).
    current: Option<IpAddr>,
    cfg: PeerRecovery,
    phase: Phase,
    last_initiation: Option<Instant>,
    attempt_deadline: Option<Instant>,
    next_allowed: Option<Instant>,
    backoff: Duration,
    failures: u32,
    pending: Vec<u32>,
    last_suppressed_event: Option<Instant>,
    /// How long one initiation may take: this peer's IKE retransmission schedule.
    attempt_timeout: Duration,
    /// `on_peer_delete = "restart"` for a static peer.
    restart_on_peer_delete: bool,
    /// The peer deleted the IKE SA: check at this time that it came back, re-initiate
    /// if not (until it is up, or we terminate it).
    restart_check: Option<Instant>,
    /// We terminated the IKE SA ourselves: a Delete(IKE) of the peer does not restart it.
    terminated: bool,
}

/// Most stale SPIs remembered per peer until its new IKE SA is up.
const MAX_PENDING: usize = 16;

/// What the agent must do after [`Recovery::on_invalid_spi`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Send Delete/Notify for `spi` over the IKE SA with `src`.
    Report {
        /// Peer address.
        src: IpAddr,
        /// The SPI.
        spi: u32,
        /// Which payloads.
        what: OnInvalidSpi,
    },
    /// Initiate an IKE SA to this peer (by name).
    Initiate(String),
    /// Send an unprotected one-way N(INVALID_SPI) hint to `src` (RFC 7296 §1.5; only
    /// with `unprotected_hint`, never to a static peer).
    Hint {
        /// The sender of the unknown SPI.
        src: IpAddr,
        /// The SPI.
        spi: u32,
    },
}

/// The recovery decision engine: rate limits, bounded tables, per-peer backoff.
#[derive(Debug)]
pub struct Recovery {
    cfg: RecoveryConfig,
    peers: Vec<PeerState>,
    spi_seen: Bounded<SpiKey>,
    src_events: Bounded<SrcKey>,
    liveness: Bounded<SrcKey>,
    budget_start: Option<Instant>,
    budget_used: u32,
    budget_event: Option<Instant>,
    stats: RecoveryStats,
    events: std::collections::VecDeque<RecoveryEvent>,
}

/// A configured IKE peer as the recovery engine sees it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Name.
    pub name: String,
    /// Static address (`None` = dynamic).
    pub addr: Option<IpAddr>,
    /// How long an initiation may take before it counts as failed (this peer's IKE
    /// retransmission schedule); `None` = the engine-wide one given to [`Recovery::new`].
    pub attempt_timeout: Option<Duration>,
    /// Initiate again when the peer deletes the IKE SA (`on_peer_delete = "restart"`;
    /// static peers only).
    pub restart_on_peer_delete: bool,
}

impl Recovery {
    /// An engine for these peers. `attempt_timeout`: how long a recovery initiation may
    /// take before it counts as failed (the IKE retransmission schedule), for peers
    /// without their own [`PeerInfo::attempt_timeout`].
    pub fn new(cfg: RecoveryConfig, peers: &[PeerInfo], attempt_timeout: Duration) -> Self {
        let max = cfg.max_tracked;
        let peers = peers
            .iter()
            .map(|p| PeerState {
                name: Arc::from(p.name.as_str()),
                addr: p.addr,
                current: None,
                cfg: cfg.for_peer(&p.name).clone(),
                phase: Phase::Idle,
                last_initiation: None,
                attempt_deadline: None,
                next_allowed: None,
                backoff: cfg.hold_down,
                failures: 0,
                pending: Vec::new(),
                last_suppressed_event: None,
                attempt_timeout: p.attempt_timeout.unwrap_or(attempt_timeout),
                restart_on_peer_delete: p.restart_on_peer_delete && p.addr.is_some(),
                restart_check: None,
                terminated: false,
            })
            .collect();
        Recovery {
            peers,
            spi_seen: Bounded::new(max),
            src_events: Bounded::new(max),
            liveness: Bounded::new(max),
            budget_start: None,
            budget_used: 0,
            budget_event: None,
            stats: RecoveryStats::default(),
            events: Default::default(),
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RecoveryConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> RecoveryStats {
        self.stats
    }

    /// Entries in the largest tracking table (≤ `max_tracked`).
    pub fn tracked(&self) -> usize {
        self.spi_seen
            .len()
            .max(self.src_events.len())
            .max(self.liveness.len())
    }

    /// Next recovery event.
    pub fn poll_event(&mut self) -> Option<RecoveryEvent> {
        self.events.pop_front()
    }

    /// The recovery settings of the peer named `name`.
    pub fn peer_config(&self, name: &str) -> Option<&PeerRecovery> {
        self.peers.iter().find(|p| *p.name == *name).map(|p| &p.cfg)
    }

    fn emit(
        &mut self,
        at: Instant,
        kind: RecoveryKind,
        peer: Option<Arc<str>>,
        src: Option<IpAddr>,
        spi: Option<u32>,
    ) {
        if matches!(kind, RecoveryKind::Suppressed { .. }) {
            self.stats.recovery_suppressed += 1;
        }
        // The queue is drained by the agent after every call; the bound is a safety net.
        if self.events.len() < 4096 {
            self.events.push_back(RecoveryEvent {
                at,
                kind,
                peer,
                src,
                spi,
            });
        }
    }

    fn budget(&mut self, now: Instant) -> bool {
        let fresh = self
            .budget_start
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(60));
        if fresh {
            self.budget_start = Some(now);
            self.budget_used = 0;
        }
        if self.budget_used >= self.cfg.global_per_minute {
            return false;
        }
        self.budget_used += 1;
        true
    }

    fn over_budget(&mut self, now: Instant, peer: Option<Arc<str>>, src: IpAddr, spi: u32) {
        // One event per budget window; the rest is counted.
        let show = self
            .budget_event
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60));
        if show {
            self.budget_event = Some(now);
            self.emit(
                now,
                RecoveryKind::Suppressed {
                    why: SuppressWhy::Budget,
                },
                peer,
                Some(src),
                Some(spi),
            );
        } else {
            self.stats.recovery_suppressed += 1;
        }
    }

    fn peer_by_addr(&self, src: IpAddr) -> Option<usize> {
        self.peers
            .iter()
            .position(|p| p.addr == Some(src))
            .or_else(|| self.peers.iter().position(|p| p.current == Some(src)))
    }

    /// The name of the peer whose IKE SA (or static address) is at `src`.
    pub fn peer_name_by_addr(&self, src: IpAddr) -> Option<&str> {
        self.peer_by_addr(src).map(|i| &*self.peers[i].name)
    }

    /// An ESP packet with unknown `spi` came from `src`. `ike_sa_up`: an established
    /// IKE SA exists with `src`; `ike_sa_any(peer)`: an IKE SA with that peer exists or
    /// is being set up.
    pub fn on_invalid_spi(
        &mut self,
        now: Instant,
        src: IpAddr,
        spi: u32,
        ike_sa_up: bool,
        ike_sa_any: impl Fn(&str) -> bool,
    ) -> Action {
        self.stats.invalid_spi_packets += 1;
        let hold = self.cfg.hold_down;
        if !self.spi_seen.admit(now, SpiKey(src, spi), hold) {
            // Rule 4: one action per SPI per hold-down; counted, never logged per packet.
            self.stats.recovery_suppressed += 1;
            return Action::None;
        }
        let pi = self.peer_by_addr(src);
        let name = pi.map(|i| self.peers[i].name.clone());
        self.emit(
            now,
            RecoveryKind::InvalidSpiSeen,
            name.clone(),
            Some(src),
            Some(spi),
        );
        if ike_sa_up {
            // Rule 1: always, whatever `invalid_spi_recovery`.
            let what = pi
                .map(|i| self.peers[i].cfg.on_invalid_spi)
                .unwrap_or(self.cfg.default.on_invalid_spi);
            if what == OnInvalidSpi::None {
                return Action::None;
            }
            if !self.budget(now) {
                self.over_budget(now, name, src, spi);
                return Action::None;
            }
            return Action::Report { src, spi, what };
        }
        let static_peer = self.peers.iter().position(|p| p.addr == Some(src));
        let Some(i) = static_peer else {
            // Rule 3: recovery impossible. One event per source per hold-down.
            let why = if self.peers.iter().any(|p| p.addr.is_none()) {
                SuppressWhy::DynamicPeer
            } else {
                SuppressWhy::NotConfigured
            };
            if self.src_events.admit(now, SrcKey(src), hold) {
                self.emit(
                    now,
                    RecoveryKind::Suppressed { why },
                    name.clone(),
                    Some(src),
                    Some(spi),
                );
                // Rule 3 option: the same once-per-source-per-hold-down admission bounds
                // the unprotected hint, and the global budget on top (a spoofed flood
                // must not make us a reflector).
                if self.cfg.unprotected_hint {
                    if !self.budget(now) {
                        self.over_budget(now, name, src, spi);
                        return Action::None;
                    }
                    self.stats.hints_sent += 1;
                    self.emit(now, RecoveryKind::HintSent, name, Some(src), Some(spi));
                    return Action::Hint { src, spi };
                }
            } else {
                self.stats.recovery_suppressed += 1;
            }
            return Action::None;
        };
        let p = &mut self.peers[i];
        if !p.cfg.invalid_spi_recovery {
            if self.src_events.admit(now, SrcKey(src), hold) {
                self.emit(
                    now,
                    RecoveryKind::Suppressed {
                        why: SuppressWhy::RecoveryOff,
                    },
                    name,
                    Some(src),
                    Some(spi),
                );
            } else {
                self.stats.recovery_suppressed += 1;
            }
            return Action::None;
        }
        if !p.pending.contains(&spi) && p.pending.len() < MAX_PENDING {
            p.pending.push(spi);
        }
        if p.phase == Phase::Initiating || ike_sa_any(&p.name) {
            // The IKE SA is coming: the pending Delete goes over it.
            return Action::None;
        }
        if p.next_allowed.is_some_and(|t| now < t) {
            let show = p
                .last_suppressed_event
                .is_none_or(|t| now.saturating_duration_since(t) >= hold);
            if show {
                p.last_suppressed_event = Some(now);
                self.emit(
                    now,
                    RecoveryKind::Suppressed {
                        why: SuppressWhy::RateLimit,
                    },
                    name,
                    Some(src),
                    Some(spi),
                );
            } else {
                self.stats.recovery_suppressed += 1;
            }
            return Action::None;
        }
        if !self.budget(now) {
            self.over_budget(now, name, src, spi);
            return Action::None;
        }
        let p = &mut self.peers[i];
        p.phase = Phase::Initiating;
        p.last_initiation = Some(now);
        p.attempt_deadline = Some(now + p.attempt_timeout);
        p.next_allowed = Some(now + p.backoff.max(hold));
        Action::Initiate(p.name.to_string())
    }

    /// The agent carried out [`Action::Report`].
    pub fn reported(&mut self, now: Instant, src: IpAddr, spi: u32, what: OnInvalidSpi) {
        let name = self.peer_by_addr(src).map(|i| self.peers[i].name.clone());
        if matches!(what, OnInvalidSpi::Delete | OnInvalidSpi::Both) {
            self.stats.deletes_sent += 1;
            self.emit(
                now,
                RecoveryKind::DeleteSent,
                name.clone(),
                Some(src),
                Some(spi),
            );
        }
        if matches!(what, OnInvalidSpi::Notify | OnInvalidSpi::Both) {
            self.stats.notifies_sent += 1;
            self.emit(now, RecoveryKind::NotifySent, name, Some(src), Some(spi));
        }
    }

    /// The agent carried out [`Action::Initiate`] (`ok`: the endpoint accepted it).
    pub fn initiated(&mut self, now: Instant, peer: &str, ok: bool) {
        let Some(i) = self.peers.iter().position(|p| *p.name == *peer) else {
            return;
        };
        let src = self.peers[i].addr;
        if ok {
            self.stats.ike_initiated += 1;
            self.emit(
                now,
                RecoveryKind::IkeInitiated,
                Some(self.peers[i].name.clone()),
                src,
                None,
            );
        } else {
            self.fail(now, i);
        }
    }

    fn fail(&mut self, now: Instant, i: usize) {
        let max = self.cfg.max_backoff;
        let p = &mut self.peers[i];
        p.phase = Phase::Idle;
        p.attempt_deadline = None;
        p.failures += 1;
        // Exponential backoff, capped.
        p.backoff = (p.backoff * 2).min(max);
        p.next_allowed = Some(now + p.backoff);
        let (name, src) = (p.name.clone(), p.addr);
        self.stats.recovery_failed += 1;
        self.emit(now, RecoveryKind::RecoveryFailed, Some(name), src, None);
    }

    /// An IKE SA with `peer` at `remote` is established: returns the stale SPIs to report
    /// over it (with the action to use).
    pub fn on_ike_established(
        &mut self,
        now: Instant,
        peer: &str,
        remote: IpAddr,
    ) -> (Vec<u32>, OnInvalidSpi) {
        let hold = self.cfg.hold_down;
        let Some(i) = self.peers.iter().position(|p| *p.name == *peer) else {
            return (Vec::new(), OnInvalidSpi::None);
        };
        let p = &mut self.peers[i];
        p.current = Some(remote);
        let was = p.phase == Phase::Initiating;
        p.phase = Phase::Idle;
        p.attempt_deadline = None;
        p.failures = 0;
        p.backoff = hold;
        p.restart_check = None;
        p.terminated = false;
        let mut spis = std::mem::take(&mut p.pending);
        // The reports over the new IKE SA are actions too: within the global budget.
        let mut allowed = 0;
        while allowed < spis.len() && self.budget(now) {
            allowed += 1;
        }
        let dropped = (spis.len() - allowed) as u64;
        self.stats.recovery_suppressed += dropped;
        spis.truncate(allowed);
        let p = &mut self.peers[i];
        // A Delete is what clears the peer's stale SA (strongSwan ignores INVALID_SPI):
        // over a brand-new IKE SA always send it, plus the notify if configured so.
        let what = match p.cfg.on_invalid_spi {
            OnInvalidSpi::Both => OnInvalidSpi::Both,
            _ => OnInvalidSpi::Delete,
        };
        if was {
            self.stats.ike_established += 1;
            self.emit(
                now,
                RecoveryKind::IkeEstablished,
                Some(self.peers[i].name.clone()),
                Some(remote),
                None,
            );
        }
        (spis, what)
    }

    /// An IKE SA attempt with `peer` failed or the peer died.
    pub fn on_ike_failed(&mut self, now: Instant, peer: &str, dead: bool) {
        let Some(i) = self.peers.iter().position(|p| *p.name == *peer) else {
            return;
        };
        if dead {
            self.stats.peers_dead += 1;
            let src = self.peers[i].current.or(self.peers[i].addr);
            self.emit(
                now,
                RecoveryKind::PeerDead,
                Some(self.peers[i].name.clone()),
                src,
                None,
            );
        }
        self.peers[i].current = None;
        if self.peers[i].phase == Phase::Initiating {
            self.fail(now, i);
        }
    }

    /// The peer reported an SA we send on as stale, and the pair was removed (only then:
    /// a report naming an SPI we do not have changes nothing, see
    /// [`Recovery::on_unknown_spi_deleted`]).
    pub fn on_stale_reported(&mut self, now: Instant, peer: &str, spi: u32) {
        self.stats.stale_sa_deleted += 1;
        let p = self.peers.iter().find(|p| *p.name == *peer);
        let src = p.and_then(|p| p.current.or(p.addr));
        let name = p.map_or_else(|| Arc::from(peer), |p| p.name.clone());
        self.emit(
            now,
            RecoveryKind::StaleSaDeletedOnPeerRequest,
            Some(name),
            src,
            Some(spi),
        );
    }

    /// The peer's protected Delete(ESP) named `spi`, which is none of our SAs: RFC 7296
    /// §1.4.1 / §3.11, nothing is deleted (the response names only the SAs actually
    /// deleted). Counted, no event: the peer may name as many as fit in a message.
    pub fn on_unknown_spi_deleted(&mut self) {
        self.stats.unknown_spi_deletes += 1;
    }

    /// The peer deleted the IKE SA with `peer` (protected Delete(IKE)). With
    /// `on_peer_delete = "restart"` the IKE SA is wanted back: the endpoint initiates at
    /// once, and [`Recovery::due_restarts`] initiates again, with hold-down and
    /// backoff, if it is not up after a hold-down (the peer went away mid-way).
    pub fn on_peer_deleted_ike(&mut self, now: Instant, peer: &str) {
        let hold = self.cfg.hold_down;
        let Some(p) = self.peers.iter_mut().find(|p| *p.name == *peer) else {
            return;
        };
        p.current = None;
        if p.restart_on_peer_delete && !p.terminated {
            p.restart_check = Some(now + hold.max(p.attempt_timeout));
        }
    }

    /// We terminated the IKE SA with `peer` (a command): it is not restarted.
    pub fn on_local_terminate(&mut self, peer: &str) {
        if let Some(p) = self.peers.iter_mut().find(|p| *p.name == *peer) {
            p.terminated = true;
            p.restart_check = None;
        }
    }

    /// We initiate an IKE SA with `peer` by command: a later Delete(IKE) of the peer
    /// restarts it again.
    pub fn on_local_initiate(&mut self, peer: &str) {
        if let Some(p) = self.peers.iter_mut().find(|p| *p.name == *peer) {
            p.terminated = false;
        }
    }

    /// Peers whose IKE SA the peer deleted and that is still not back
    /// (`ike_sa_any(peer)`: an IKE SA with it exists or is being set up): the agent
    /// initiates them and reports with [`Recovery::initiated`]. At most one attempt per
    /// hold-down, the backoff doubling after each failed one, so two peers cannot loop.
    pub fn due_restarts(&mut self, now: Instant, ike_sa_any: impl Fn(&str) -> bool) -> Vec<String> {
        let hold = self.cfg.hold_down;
        let mut out = Vec::new();
        for i in 0..self.peers.len() {
            let p = &mut self.peers[i];
            let Some(t) = p.restart_check else {
                continue;
            };
            if t > now {
                continue;
            }
            if p.phase == Phase::Initiating || ike_sa_any(&p.name) {
                // An attempt is running (ours or the endpoint's): look again after it.
                p.restart_check = Some(now + p.attempt_timeout.max(hold));
                continue;
            }
            if let Some(n) = p.next_allowed.filter(|n| *n > now) {
                p.restart_check = Some(n);
                continue;
            }
            if !self.budget(now) {
                let p = &mut self.peers[i];
                p.restart_check = Some(now + hold);
                self.stats.recovery_suppressed += 1;
                continue;
            }
            let p = &mut self.peers[i];
            p.phase = Phase::Initiating;
            p.last_initiation = Some(now);
            p.attempt_deadline = Some(now + p.attempt_timeout);
            p.next_allowed = Some(now + p.backoff.max(hold));
            // Checked again when the attempt has failed (or succeeded: then cleared).
            p.restart_check = Some(now + p.attempt_timeout);
            let (name, src) = (p.name.clone(), p.addr);
            self.stats.ike_restarts += 1;
            self.emit(
                now,
                RecoveryKind::IkeRestarted,
                Some(name.clone()),
                src,
                None,
            );
            out.push(name.to_string());
        }
        out
    }

    /// An unprotected notification came from `src` (RFC 7296 §2.21.4: it never changes
    /// SA state). Returns the peer to send a liveness check to, at most once per
    /// hold-down per source.
    pub fn on_unprotected(&mut self, now: Instant, src: IpAddr, ike_sa_up: bool) -> Option<String> {
        if !ike_sa_up {
            return None;
        }
        let name = self
            .peers
            .iter()
            .find(|p| p.current == Some(src) || p.addr == Some(src))?
            .name
            .clone();
        if !self.liveness.admit(now, SrcKey(src), self.cfg.hold_down) {
            self.stats.recovery_suppressed += 1;
            return None;
        }
        self.stats.liveness_checks += 1;
        self.emit(
            now,
            RecoveryKind::LivenessCheck,
            Some(name.clone()),
            Some(src),
            None,
        );
        Some(name.to_string())
    }

    /// Timers: recovery attempts that took too long count as failed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.peers.len() {
            if self.peers[i].attempt_deadline.is_some_and(|t| t <= now) {
                self.fail(now, i);
            }
        }
    }

    /// The next attempt deadline or restart check.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.peers
            .iter()
            .flat_map(|p| [p.attempt_deadline, p.restart_check])
            .flatten()
            .min()
    }

    /// Per-peer status.
    pub fn status(&self, now: Instant) -> Vec<PeerRecoveryStatus> {
        self.peers
            .iter()
            .map(|p| {
                let remaining = p
                    .next_allowed
                    .map(|t| t.saturating_duration_since(now).as_secs_f64())
                    .unwrap_or(0.0);
                PeerRecoveryStatus {
                    peer: p.name.to_string(),
                    address: p.addr,
                    state: match p.phase {
                        Phase::Initiating => "initiating",
                        Phase::Idle if remaining > 0.0 && p.failures > 0 => "backoff",
                        Phase::Idle => "idle",
                    },
                    invalid_spi_recovery: p.cfg.invalid_spi_recovery,
                    on_invalid_spi: p.cfg.on_invalid_spi.as_str(),
                    last_initiation_secs_ago: p
                        .last_initiation
                        .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                    hold_down_remaining_secs: remaining,
                    backoff_secs: p.backoff.as_secs_f64(),
                    failures: p.failures,
                    pending_spis: p.pending.iter().map(|s| format!("0x{s:08x}")).collect(),
                    restart_pending: p.restart_check.is_some(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod engine_tests {
    use super::*;

    #[test]
    fn bounded_table_evicts() {
        let mut b = Bounded::new(4);
        let t0 = Instant::now();
        for i in 0..100u32 {
            assert!(b.admit(
                t0 + Duration::from_millis(i.into()),
                i,
                Duration::from_secs(10)
            ));
            assert!(b.len() <= 4);
        }
        assert!(!b.admit(t0 + Duration::from_millis(100), 99, Duration::from_secs(10)));
    }

    /// The table as first written (an O(n) pass allocating a `Vec` of ages when full): the
    /// ring-based one must give the same answers and keep the same entries.
    struct Model {
        map: HashMap<u32, Instant>,
        cap: usize,
    }

    impl Model {
        fn admit(&mut self, now: Instant, key: u32, hold: Duration) -> bool {
            if let Some(t) = self.map.get(&key) {
                if now.saturating_duration_since(*t) < hold {
                    return false;
                }
            }
            if !self.map.contains_key(&key) && self.map.len() >= self.cap {
                self.map
                    .retain(|_, t| now.saturating_duration_since(*t) < hold);
                if self.map.len() >= self.cap {
                    let mut ages: Vec<Instant> = self.map.values().copied().collect();
                    let n = (self.cap / 8).min(ages.len() - 1);
                    let (_, cut, _) = ages.select_nth_unstable(n);
                    let cut = *cut;
                    self.map.retain(|_, t| *t > cut);
                }
            }
            self.map.insert(key, now);
            true
        }
    }

    #[test]
    fn bounded_table_agrees_with_the_plain_scan() {
        let t0 = Instant::now();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut evictions, mut refused, mut readmitted) = (0, 0, 0);
        for (cap, hold_ms) in [(1, 50), (4, 0), (16, 200), (64, 1000), (100, 30)] {
            let hold = Duration::from_millis(hold_ms);
            let mut model = Model {
                map: HashMap::new(),
                cap,
            };
            let mut b = Bounded::new(cap);
            let mut ms = 0u64;
            for i in 0..20_000 {
                let r = next();
                // Often several packets at one instant (ties at the eviction cut).
                ms += [0, 0, 1, 3][(r & 3) as usize];
                let now = t0 + Duration::from_millis(ms);
                // A few hot keys (held down, re-admitted) and a flood of fresh ones.
                let key = if r >> 62 == 0 {
                    (r >> 8) as u32 % 8
                } else {
                    (r >> 16) as u32
                };
                let before = model.map.len();
                let want = model.admit(now, key, hold);
                assert_eq!(b.admit(now, key, hold), want, "cap {cap} step {i}");
                refused += u32::from(!want);
                evictions += u32::from(model.map.len() <= before && want);
                readmitted += u32::from(want && key < 8);
                assert_eq!(b.len(), model.map.len(), "cap {cap} step {i}");
                assert!(b.len() <= cap && b.ring.len() <= 2 * cap);
                for (k, (t, _)) in &b.map {
                    assert_eq!(model.map.get(k), Some(t), "cap {cap} step {i}");
                }
            }
        }
        assert!(
            evictions > 1000 && refused > 1000 && readmitted > 1000,
            "{evictions} {refused} {readmitted}"
        );
    }

    /// The bytes a key feeds the hasher (lengths included, as SipHash's last block does).
    #[derive(Default)]
    struct Bytes(Vec<u8>);

    impl Hasher for Bytes {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, b: &[u8]) {
            self.0.extend_from_slice(b);
        }
    }

    fn fed(k: impl Hash) -> Vec<u8> {
        let mut h = Bytes::default();
        k.hash(&mut h);
        h.0
    }

    #[test]
    fn table_keys_feed_the_hasher_one_distinct_input_per_key() {
        let v4: IpAddr = "198.18.0.1".parse().unwrap();
        let v4b: IpAddr = "198.18.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.18.0.1".parse().unwrap();
        let v6: IpAddr = "2001:2::1".parse().unwrap();
        let keys = [
            SpiKey(v4, 0x100),
            SpiKey(v4, 0x101),
            SpiKey(v4b, 0x100),
            SpiKey(mapped, 0x100),
            SpiKey(v6, 0x100),
            SpiKey(v6, 0x101),
        ];
        let inputs: std::collections::BTreeSet<Vec<u8>> = keys.iter().map(|k| fed(*k)).collect();
        assert_eq!(inputs.len(), keys.len());
        // One write each: 8 bytes for IPv4, 20 for IPv6.
        assert_eq!(fed(SpiKey(v4, 1)).len(), 8);
        assert_eq!(fed(SpiKey(v6, 1)).len(), 20);
        let srcs = [v4, v4b, mapped, v6].map(|a| fed(SrcKey(a)));
        assert_eq!(
            srcs.iter().collect::<std::collections::BTreeSet<_>>().len(),
            4
        );
        assert_eq!((srcs[0].len(), srcs[3].len()), (4, 16));
        // The engine's tables keep IPv4 and IPv4-mapped senders apart.
        let mut b = Bounded::new(8);
        let t0 = Instant::now();
        let hold = Duration::from_secs(10);
        assert!(b.admit(t0, SpiKey(v4, 7), hold));
        assert!(b.admit(t0, SpiKey(mapped, 7), hold));
        assert!(!b.admit(t0, SpiKey(v4, 7), hold));
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn log_line_shape() {
        let e = RecoveryEvent {
            at: Instant::now(),
            kind: RecoveryKind::Suppressed {
                why: SuppressWhy::DynamicPeer,
            },
            peer: None,
            src: Some("198.18.0.9".parse().unwrap()),
            spi: Some(0x1234),
        };
        assert_eq!(
            recovery_log_line(&e),
            "%CRYPTO-6-INV_SPI_RECOVERY: recovery suppressed: dynamic peer srcaddr=198.18.0.9 spi=0x00001234"
        );
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    fn engine() -> Recovery {
        let cfg = RecoveryConfig {
            default: PeerRecovery {
                invalid_spi_recovery: true,
                ..PeerRecovery::default()
            },
            ..RecoveryConfig::default()
        };
        let peers = [PeerInfo {
            name: "b".into(),
            addr: Some("198.18.0.2".parse().unwrap()),
            attempt_timeout: None,
            restart_on_peer_delete: false,
        }];
        Recovery::new(cfg, &peers, Duration::from_secs(7))
    }

    #[test]
    fn failed_attempts_back_off_exponentially_and_success_resets() {
        let mut r = engine();
        let src: IpAddr = "198.18.0.2".parse().unwrap();
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut spi = 1000;
        let mut try_at = |r: &mut Recovery, t: Instant| {
            spi += 1;
            r.on_invalid_spi(t, src, spi, false, |_| false)
        };
        assert_eq!(try_at(&mut r, s(0)), Action::Initiate("b".into()));
        r.initiated(s(0), "b", true);
        // No IKE SA after the retransmission schedule: failed, backoff 20 s.
        r.handle_timeout(s(7));
        assert_eq!(r.stats().recovery_failed, 1);
        assert_eq!(try_at(&mut r, s(20)), Action::None, "backoff running");
        assert_eq!(try_at(&mut r, s(27)), Action::Initiate("b".into()));
        r.initiated(s(27), "b", true);
        r.handle_timeout(s(34));
        // 40 s now.
        assert_eq!(try_at(&mut r, s(60)), Action::None);
        assert_eq!(try_at(&mut r, s(74)), Action::Initiate("b".into()));
        r.initiated(s(74), "b", true);
        let st = &r.status(s(75))[0];
        assert_eq!((st.state, st.failures), ("initiating", 2));
        let (pending, what) = r.on_ike_established(s(75), "b", src);
        assert_eq!(what, OnInvalidSpi::Delete);
        assert!(!pending.is_empty());
        let st = &r.status(s(75))[0];
        assert_eq!((st.failures, st.backoff_secs), (0, 10.0));
        assert!(st.pending_spis.is_empty());
        // Capped at max_backoff.
        let mut r = engine();
        let mut t = s(0);
        for _ in 0..12 {
            loop {
                if try_at(&mut r, t) != Action::None {
                    break;
                }
                t += Duration::from_secs(1);
            }
            r.initiated(t, "b", true);
            t += Duration::from_secs(7);
            r.handle_timeout(t);
        }
        assert_eq!(r.status(t)[0].backoff_secs, 300.0);
        assert_eq!(r.stats().ike_initiated, 12);
    }
}
