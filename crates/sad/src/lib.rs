//! Security Association Database for esplab.
//!
//! * Inbound SAs by SPI. SPIs this SAD allocates are shaped for a direct index: the low bits
//!   pick a slot, the rest are random, the full SPI is kept as the slot's tag and compared on
//!   lookup. SPIs chosen elsewhere (manual keys) go to a SipHash-keyed fallback map.
//! * Outbound SAs by peer and IKEv2 traffic selectors (RFC 7296 §3.13.1), matched by a linear
//!   scan in installation order.
//! * Readers never lock: writers publish immutable snapshots through `arc-swap` (RCU), and a
//!   per-thread [`SadReader`] caches the current one.
//! * Removed or rekeyed SPIs stay [`Lookup::Retired`] for a grace period, so late packets are
//!   told apart from unknown SPIs.
//! * Values are stored inline, next to their SPI (`V: Clone`: a write copies the 1024-slot
//!   chunk it touches). Keep them small: the datapath stores an index into its own SA array
//!   as a `NonZeroU32`, which makes a slot 8 bytes, SPI included; an `Arc` makes it 16.
//!
//! No I/O and no clock: time comes in as `Instant` arguments. See `docs/sad.md` for the
//! design and measured costs.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use esplab_sad::{Lookup, Sad, SadConfig};
//!
//! let sad: Sad<&str> = Sad::new(SadConfig { rng_seed: Some(7), ..SadConfig::default() });
//! let mut reader = sad.reader(); // one per datapath thread
//!
//! // IKE: the SPI goes into the SA payload before the keys exist.
//! let spi = sad.reserve_spi().unwrap();
//! assert!(spi > 255);
//! assert!(matches!(reader.lookup(spi), Lookup::Unknown));
//! sad.install(spi, "child-sa-1").unwrap();
//! assert!(matches!(reader.lookup(spi), Lookup::Hit(&"child-sa-1")));
//!
//! // Delete: late packets are recognised for the grace period, then forgotten.
//! let t0 = Instant::now();
//! sad.remove(spi, t0);
//! assert!(matches!(reader.lookup(spi), Lookup::Retired));
//! sad.purge(t0 + Duration::from_secs(5));
//! assert!(matches!(reader.lookup(spi), Lookup::Unknown));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
mod foreign;
mod lookup;
mod reader;
mod sad;
mod selector;
mod table;
mod txn;
mod view;

pub use config::SadConfig;
pub use error::SadError;
pub use lookup::Lookup;
pub use reader::SadReader;
pub use sad::{Sad, MAX_CAPACITY};
pub use selector::{FlowKey, SelectorError, SelectorPair, TrafficSelector};
pub use txn::SadTxn;
pub use view::{EntryState, InboundEntry, OutboundEntry, SadStats, SadView, BATCH};
