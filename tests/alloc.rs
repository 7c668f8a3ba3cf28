//! The per-packet hot path allocates nothing: steady-state encap and decap, for every
//! algorithm and backend, make zero heap allocations once the SAs and the buffer exist.
//!
//! This file is its own test binary, so it can install a counting global allocator. The count
//! is per thread: the test harness's own threads (output capture, the "running for over 60 s"
//! watchdog) allocate whenever they like, and must not be charged to the datapath.

use bytes::{BufMut, BytesMut};
use esplab_esp::{Algorithm, Backend, InboundSa, OutboundSa, ReplayWindow, SaParams};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts every allocation (including zeroed allocations and reallocations) and forwards
/// it to the system allocator.
struct CountingAlloc;

thread_local! {
    // `const` initialisation: touching it never allocates (a lazily initialised thread local
    // could recurse into the allocator).
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// Counts one allocation on the calling thread. `try_with` because the allocator also runs
/// while a thread's locals are being torn down.
fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract (layout, pointer provenance, alignment) is upheld by `System`; the
// only addition is a thread-local counter increment, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's: `layout` has non-zero size.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` was allocated by this allocator (i.e. by `System`) with `layout`,
        // and `new_size` is non-zero, as our caller guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Allocations made so far by the calling thread.
fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

const PACKETS: usize = 1000;
/// Largest payload sent; the buffer is sized for it once, outside the measured loop.
const MAX_PAYLOAD: usize = 1500;
/// Headroom left in front of the ESP header for an outer IPv6 + UDP header.
const OUTER: usize = 48;

#[test]
fn steady_state_encap_and_decap_do_not_allocate() {
    // The counter works: a heap allocation in this thread is seen.
    let before = allocations();
    let probe = std::hint::black_box(vec![1u8; 64]);
    assert!(
        allocations() > before,
        "the counting allocator is not installed"
    );
    drop(probe);

    let payload: Vec<u8> = (0..MAX_PAYLOAD).map(|i| i as u8).collect();
    let mut combos = 0;
    for alg in Algorithm::ALL {
        for backend in Backend::ALL {
            for esn in [false, true] {
                let ctx = format!("{} [{}] esn={esn}", alg.name(), backend.name());
                // --- Setup (allocates: keys, key schedules, replay bitmap, buffer).
                let mut params = SaParams::new(
                    0xc0de_a110,
                    alg,
                    &vec![0x42; alg.enc_key_len()],
                    &vec![0x24; alg.integ_key_len()],
                );
                params.backend = backend;
                params.esn = esn;
                let mut tx = OutboundSa::new(&params).unwrap();
                let mut rx = InboundSa::new(&params).unwrap();
                if esn {
                    // Cross a high-half boundary inside the measured loop.
                    let start = (1u64 << 32) - (PACKETS as u64 / 2);
                    tx.set_next_seq(start);
                    rx.set_replay(ReplayWindow::with_initial_high(64, true, 0).unwrap());
                }
                let hdr = tx.header_len();
                let mut buf =
                    BytesMut::with_capacity(OUTER + hdr + MAX_PAYLOAD + tx.max_trailer_len());
                let capacity = buf.capacity();
                // One packet outside the measurement, so lazy one-time initialisation (CPU
                // feature detection and the like) is not counted as per-packet work.
                one_packet(&mut tx, &mut rx, &mut buf, hdr, &payload[..100], &ctx);

                // --- Measured: PACKETS packets of varying sizes through encap and decap.
                let start = allocations();
                for i in 0..PACKETS {
                    let len = (i * 37) % (MAX_PAYLOAD + 1);
                    one_packet(&mut tx, &mut rx, &mut buf, hdr, &payload[..len], &ctx);
                }
                let delta = allocations() - start;
                assert_eq!(delta, 0, "{ctx}: {delta} allocations in {PACKETS} packets");
                assert_eq!(buf.capacity(), capacity, "{ctx}: buffer grew");
                assert_eq!(tx.last_seq(), rx.replay().right_edge(), "{ctx}");
                combos += 1;
            }
        }
    }
    assert_eq!(combos, 16);
}

/// One packet: reuse the buffer, encap with the BytesMut API, decap in place, check.
/// Panics (which allocate) only on failure.
fn one_packet(
    tx: &mut OutboundSa,
    rx: &mut InboundSa,
    buf: &mut BytesMut,
    hdr: usize,
    payload: &[u8],
    ctx: &str,
) {
    buf.clear();
    buf.put_bytes(0, OUTER + hdr);
    buf.put_slice(payload);
    let e = match tx.encap(buf, OUTER + hdr, 4, None) {
        Ok(e) => e,
        Err(err) => panic!("{ctx}: encap: {err}"),
    };
    let d = match rx.decap(&mut buf[e.esp.clone()]) {
        Ok(d) => d,
        Err(err) => panic!("{ctx}: decap: {err}"),
    };
    assert!(d.seq == e.seq && d.next_header == 4, "{ctx}: decap result");
    assert!(&buf[e.esp][d.payload] == payload, "{ctx}: payload");
}
