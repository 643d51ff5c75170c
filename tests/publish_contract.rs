//! The publisher's contract with the store (DURABILITY.md "Capture time and arrival", "Resumable
//! publishing"): capture times are checked against the store's clock, retention counts from
//! arrival as well as capture, a refused frame never claims time, and a publisher that resumes
//! from its last acknowledged frame after any refusal loses nothing and doubles nothing.

use std::sync::Arc;

use camvault_tests::{all_frames, payload, test_config, FRAME_US, T0_US};
use proptest::prelude::*;
use storage_core::io::{CrashMode, FaultKind, FaultyVfs, MemVfs, Vfs};
use storage_core::{Clock, Codec, Env, Error, FrameIn, SimClock, Store, StreamKind, StreamWriter};

const DAY_US: i64 = 86_400_000_000;

fn open(vfs: Arc<dyn Vfs>, clock: &Arc<SimClock>) -> Store {
    let c: Arc<dyn Clock> = clock.clone();
    Store::open_with(test_config(), Env { vfs, clock: c, kek: None }).expect("open")
}

fn frame(n: u64, payload: &[u8]) -> FrameIn<'_> {
    FrameIn { ts_us: T0_US + n as i64 * FRAME_US, pts_90k: Some(n as i64 * 3600), key: n.is_multiple_of(25), payload }
}

/// Finding 1 of the ingest issue: a camera without a clock battery stamps 1970 (or a wrapped
/// counter, or 2200); such frames are refused with the bound named, never stored to be erased
/// by the next sweep or to sit in 2200 for ever.
#[test]
fn capture_times_the_store_cannot_trust_are_refused_naming_the_bound() {
    let clock = Arc::new(SimClock::new(T0_US));
    let store = open(Arc::new(MemVfs::new()), &clock);
    let year_2200_us = 7_258_118_400_000_000;
    for kind in [StreamKind::Live, StreamKind::Backfill] {
        let mut s = store.open_stream_as("cam-1", Codec::H264, b"cfg", kind).expect("stream");
        for ts_us in [i64::MIN, -10_000_000, 0, 86_400_000_000, year_2200_us, i64::MAX, T0_US + 301_000_000] {
            let e = s.append(FrameIn { ts_us, pts_90k: None, key: true, payload: b"x" }).expect_err("refused");
            assert!(matches!(e, Error::CaptureTime { .. }), "{kind:?} {ts_us}: {e}");
            let text = e.to_string();
            assert!(text.contains("2000-01-01") || text.contains("300 s ahead"), "{text}");
        }
        s.close().expect("nothing was stored");
    }
    // A live stream is also refused when its camera lags: ten minutes behind the clock.
    let mut live = store.open_stream("cam-1", Codec::H264, b"cfg").expect("stream");
    let e = live.append(FrameIn { ts_us: T0_US - 600_000_000, pts_90k: None, key: true, payload: b"x" }).expect_err("lagging");
    assert!(e.to_string().contains("300 s behind") && e.to_string().contains("backfill"), "{e}");
    // Within the bound either way, it is taken.
    live.append(FrameIn { ts_us: T0_US - 299_000_000, pts_90k: None, key: true, payload: b"x" }).expect("within the bound");
    live.append(FrameIn { ts_us: T0_US + 299_000_000, pts_90k: None, key: false, payload: b"y" }).expect("within the bound");
    live.close().expect("close");
    assert_eq!(all_frames(&store, "cam-1").len(), 2, "only the two frames inside the bound");
}

/// Retention counts from arrival as well as capture: footage recorded 60 days ago and
/// forwarded today (a backfill) is kept for the full 30 days from today.
#[test]
fn backfilled_footage_is_kept_for_the_retention_from_its_arrival() {
    let clock = Arc::new(SimClock::new(T0_US));
    let store = open(Arc::new(MemVfs::new()), &clock);
    let mut s = store.open_stream_as("cam-sd", Codec::H264, b"cfg", StreamKind::Backfill).expect("backfill");
    let captured = T0_US - 60 * DAY_US;
    for n in 0..100u64 {
        let p = payload("cam-sd", n, n.is_multiple_of(25));
        s.append(FrameIn { ts_us: captured + n as i64 * FRAME_US, pts_90k: None, key: n.is_multiple_of(25), payload: &p }).expect("append");
    }
    s.close().expect("close");
    let sealed: Vec<_> = store.segments("cam-sd", i64::MIN, i64::MAX).expect("segments").into_iter().filter_map(|s| s.sealed).collect();
    assert!(
        !sealed.is_empty() && sealed.iter().all(|i| i.sealed_us == T0_US && i.last_ts_us < captured + DAY_US),
        "both times kept: {sealed:?}"
    );
    clock.set_us(T0_US + 29 * DAY_US);
    assert_eq!(store.sweep().expect("sweep").erased(), 0, "captured 89 days ago, arrived 29 days ago: kept");
    assert_eq!(all_frames(&store, "cam-sd").len(), 100);
    clock.set_us(T0_US + 31 * DAY_US);
    assert!(store.sweep().expect("sweep").erased() > 0);
    assert_eq!(all_frames(&store, "cam-sd").len(), 0, "31 days after arrival it is erased");
}

/// Finding 2: a publisher refused mid-stream re-sends from its last acknowledged frame on a
/// new stream; frames already stored are acknowledged, not refused and not doubled.
#[test]
fn re_sent_frames_that_are_stored_are_acknowledged_not_doubled() {
    let clock = Arc::new(SimClock::new(T0_US));
    let store = open(Arc::new(MemVfs::new()), &clock);
    let p = |n: u64| payload("cam-r", n, n.is_multiple_of(25));
    let mut s = store.open_stream("cam-r", Codec::H264, b"cfg").expect("stream");
    for n in 0..80 {
        s.append(frame(n, &p(n))).expect("append");
    }
    // A frame repeating the last time: refused, the stream ends; what came before is kept.
    assert!(matches!(s.append(frame(79, &p(79))).expect_err("repeat"), Error::OutOfOrder { .. }));
    s.close().expect("close");
    // The publisher did not see its acknowledgements: it re-sends everything, then goes on.
    let mut r = store.open_stream("cam-r", Codec::H264, b"cfg").expect("resume");
    for n in 0..80 {
        assert_eq!(r.append(frame(n, &p(n))).expect("a stored frame is acknowledged"), n + 1);
    }
    assert_eq!(r.durable_seq(), 80, "stored frames are durable at once");
    for n in 80..120 {
        r.append(frame(n, &p(n))).expect("new frames are stored");
    }
    r.close().expect("close");
    let got = all_frames(&store, "cam-r");
    assert_eq!(got.len(), 120, "nothing doubled, nothing lost");
    assert!(got.iter().enumerate().all(|(n, f)| f.ts_us == frame(n as u64, b"").ts_us && f.payload.as_ref() == p(n as u64).as_slice()));
    assert_eq!(store.metrics().frames_resent.load(std::sync::atomic::Ordering::Relaxed), 80);
    // Different bytes at a stored time are refused.
    let mut w = store.open_stream("cam-r", Codec::H264, b"cfg").expect("stream");
    assert!(matches!(w.append(frame(10, b"other bytes")).expect_err("different"), Error::Overlap { .. }));
}

/// A publisher that reconnects while its old call is still finishing: frames the old stream
/// makes durable after the new one began re-sending are found, not refused as other video.
#[test]
fn a_resumed_stream_finds_frames_made_durable_after_it_began() {
    let clock = Arc::new(SimClock::new(T0_US));
    let store = open(Arc::new(MemVfs::new()), &clock);
    let p = |n: u64| payload("cam-o", n, n.is_multiple_of(25));
    let mut old = store.open_stream("cam-o", Codec::H264, b"cfg").expect("old stream");
    for n in 0..20 {
        old.append(frame(n, &p(n))).expect("append");
    }
    old.flush().expect("flush");
    let mut new = store.open_stream("cam-o", Codec::H264, b"cfg").expect("new stream");
    for n in 0..10 {
        new.append(frame(n, &p(n))).expect("stored: acknowledged");
    }
    // The old call goes on a little and makes it durable.
    for n in 20..30 {
        old.append(frame(n, &p(n))).expect("append");
    }
    old.close().expect("close");
    for n in 10..40 {
        new.append(frame(n, &p(n))).unwrap_or_else(|e| panic!("frame {n}: {e}"));
    }
    new.close().expect("close");
    let got = all_frames(&store, "cam-o");
    assert_eq!(got.len(), 40);
    assert!(got.windows(2).all(|w| w[0].ts_us < w[1].ts_us));
}

/// Once a stream has stored a frame of its own, it may not overlap stored video, even after
/// that frame rolled its segment: re-sending is for the start of a resumed stream.
#[test]
fn after_its_first_new_frame_a_stream_may_not_overlap_stored_video() {
    let clock = Arc::new(SimClock::new(T0_US));
    let store = open(Arc::new(MemVfs::new()), &clock);
    let p = |n: u64| payload("cam-s", n, true);
    let append = |w: &mut StreamWriter, n: u64| {
        let bytes = p(n);
        w.append(FrameIn { ts_us: T0_US + n as i64 * FRAME_US, pts_90k: None, key: true, payload: &bytes })
    };
    let mut a = store.open_stream("cam-s", Codec::H264, b"cfg").expect("stream");
    for n in (0..10).chain(1000..1010) {
        append(&mut a, n).expect("append");
    }
    a.close().expect("close");
    let mut b = store.open_stream("cam-s", Codec::H264, b"cfg").expect("stream");
    for n in 0..10 {
        append(&mut b, n).expect("re-sent: acknowledged");
    }
    // A new frame 20 s on (a gap: it rolls the segment), then the stored frames after it.
    append(&mut b, 500).expect("a new frame");
    let e = append(&mut b, 1000).expect_err("overlaps stored video");
    assert!(matches!(e, Error::Overlap { .. }), "{e}");
}

/// Finding 2, the full disk: the refused frame does not extend the segment's time range, and
/// once space returns the publisher resumes from its last acknowledged frame.
#[test]
fn a_refused_frame_never_extends_a_segment_s_time_range() {
    let clock = Arc::new(SimClock::new(T0_US));
    let faulty = FaultyVfs::new(Arc::new(MemVfs::new()));
    let store = open(Arc::new(faulty.clone()), &clock);
    let p = |n: u64| payload("cam-f", n, n.is_multiple_of(25));
    let mut s = store.open_stream("cam-f", Codec::H264, b"cfg").expect("stream");
    for n in 0..30 {
        s.append(frame(n, &p(n))).expect("append");
    }
    let acked = s.flush().expect("flush");
    faulty.fail_after(0, FaultKind::NoSpace);
    let mut refused_at = None;
    for n in 30..400 {
        if s.append(frame(n, &p(n))).is_err() {
            refused_at = Some(n);
            break;
        }
    }
    let refused_at = refused_at.expect("the full disk refuses a frame");
    let _ = s.close();
    let last = store.segments("cam-f", i64::MIN, i64::MAX).expect("segments").iter().map(|s| s.last_ts_us).max().expect("a segment");
    assert!(last < frame(refused_at, b"").ts_us, "the index claims {last}, past the refused frame");
    faulty.heal();
    let mut r = store.open_stream("cam-f", Codec::H264, b"cfg").expect("resume");
    for n in acked..450 {
        r.append(frame(n, &p(n))).unwrap_or_else(|e| panic!("resume from {acked}: frame {n}: {e}"));
    }
    r.close().expect("close");
    let got = all_frames(&store, "cam-f");
    assert_eq!(got.len(), 450);
    assert!(got.windows(2).all(|w| w[0].ts_us < w[1].ts_us));
}

/// What the client does.
#[derive(Debug, Clone)]
enum Op {
    /// Send this many frames (opening a stream, resuming, if none is open).
    Send(u8),
    /// Ask for durability.
    Flush,
    /// Send a frame repeating the previous time: refused, the stream ends.
    BadFrame,
    /// The disk fills after this many more writes.
    DiskFull(u8),
    /// Space returns.
    SpaceBack,
    /// The server process dies and starts again.
    Restart(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..60).prop_map(Op::Send),
        2 => Just(Op::Flush),
        1 => Just(Op::BadFrame),
        1 => (0u8..20).prop_map(Op::DiskFull),
        1 => Just(Op::SpaceBack),
        1 => (0u8..3).prop_map(Op::Restart),
    ]
}

/// The publisher: frames 0.. in order, `acked` of them acknowledged durable; a stream sends
/// from `base` (its sequence number n is frame base + n - 1).
struct Publisher {
    next: u64,
    acked: u64,
    stream: Option<(StreamWriter, u64)>,
}

impl Publisher {
    fn end_stream(&mut self) {
        if let Some((w, base)) = self.stream.take() {
            let durable = w.durable_seq();
            // Closing seals: on success everything the stream took is durable.
            let accepted = self.next - base;
            let sealed = w.close().is_ok();
            self.acked = self.acked.max(base + if sealed { accepted } else { durable });
        }
        // Resume from the last acknowledged frame.
        self.next = self.acked;
    }
}

fn check(store: &Store, publisher: &Publisher, what: &str) {
    let got = all_frames(store, "cam-p");
    let order: Vec<(u64, u64)> = got.iter().map(|f| (((f.ts_us - T0_US) / FRAME_US) as u64, f.segment.0)).collect();
    assert!(
        got.windows(2).all(|w| w[0].ts_us < w[1].ts_us),
        "{what}: frames doubled or out of order: {order:?}; acked {}",
        publisher.acked
    );
    for f in &got {
        let n = ((f.ts_us - T0_US) / FRAME_US) as u64;
        assert_eq!(f.payload.as_ref(), payload("cam-p", n, n.is_multiple_of(25)).as_slice(), "{what}: frame {n}");
    }
    let present: std::collections::HashSet<i64> = got.iter().map(|f| f.ts_us).collect();
    for n in 0..publisher.acked {
        assert!(present.contains(&frame(n, b"").ts_us), "{what}: acknowledged frame {n} is lost");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random interleavings of publishing, bad frames, a full disk, space returning and
    /// restarts: acknowledged frames are never lost, nothing is doubled, and resuming from the
    /// last acknowledged frame always works once the disk has room.
    #[test]
    fn resuming_after_any_refusal_loses_and_doubles_nothing(ops in proptest::collection::vec(op(), 1..40)) {
        let clock = Arc::new(SimClock::new(T0_US));
        let mut mem = MemVfs::new();
        let mut faulty = FaultyVfs::new(Arc::new(mem.clone()));
        let mut store = open(Arc::new(faulty.clone()), &clock);
        let mut publisher = Publisher { next: 0, acked: 0, stream: None };
        for (i, op) in ops.iter().enumerate() {
            let what = format!("op {i} {op:?}");
            match op {
                Op::Send(k) => {
                    for _ in 0..*k {
                        if publisher.stream.is_none() {
                            match store.open_stream("cam-p", Codec::H264, b"cfg") {
                                Ok(w) => publisher.stream = Some((w, publisher.next)),
                                Err(_) => break,
                            }
                        }
                        let n = publisher.next;
                        let p = payload("cam-p", n, n.is_multiple_of(25));
                        let Some((w, _)) = publisher.stream.as_mut() else { break };
                        match w.append(frame(n, &p)) {
                            Ok(_) => publisher.next += 1,
                            Err(_) => {
                                publisher.end_stream();
                                break;
                            }
                        }
                    }
                }
                Op::Flush => {
                    if let Some((w, base)) = publisher.stream.as_ref() {
                        match w.flush() {
                            Ok(d) => publisher.acked = publisher.acked.max(base + d),
                            Err(_) => publisher.end_stream(),
                        }
                    }
                }
                Op::BadFrame => {
                    if let Some((w, base)) = publisher.stream.as_mut() {
                        if publisher.next > *base {
                            let n = publisher.next - 1;
                            let refused = w.append(frame(n, b"repeat")).is_err();
                            prop_assert!(refused, "{}: a repeated time is refused", what);
                            publisher.end_stream();
                        }
                    }
                }
                Op::DiskFull(n) => faulty.fail_after(u64::from(*n), FaultKind::NoSpace),
                Op::SpaceBack => faulty.heal(),
                Op::Restart(mode) => {
                    // The process dies: its stream and store go with it, unsealed.
                    if let Some((w, _)) = publisher.stream.take() {
                        std::mem::forget(w);
                    }
                    publisher.next = publisher.acked;
                    store.abandon();
                    let mode = [CrashMode::LoseUnsynced, CrashMode::TearLastWrite, CrashMode::KeepUnsynced][usize::from(*mode)];
                    mem = mem.crash(mode);
                    faulty = FaultyVfs::new(Arc::new(mem.clone()));
                    store = open(Arc::new(faulty.clone()), &clock);
                }
            }
            check(&store, &publisher, &what);
        }
        // Space back, resume, send everything: it all goes in. A failed fsync poisoned its
        // writer for good (it is never retried): then the operator restarts the server first.
        faulty.heal();
        publisher.end_stream();
        let end = publisher.next + 60;
        let resume = |store: &Store, from: u64| -> storage_core::Result<()> {
            let mut w = store.open_stream("cam-p", Codec::H264, b"cfg")?;
            for n in from..end {
                let p = payload("cam-p", n, n.is_multiple_of(25));
                w.append(frame(n, &p))?;
            }
            w.close()
        };
        match resume(&store, publisher.next) {
            Ok(()) => {}
            Err(e @ Error::Poisoned(_)) | Err(e @ Error::Io { .. }) if e.to_string().contains("poisoned") => {
                store.abandon();
                mem = mem.crash(CrashMode::KeepUnsynced);
                store = open(Arc::new(mem.clone()), &clock);
                check(&store, &publisher, "restart after a poisoned writer");
                resume(&store, publisher.next).unwrap_or_else(|e| panic!("resume from {} after a restart: {e}", publisher.next));
            }
            Err(e) => panic!("resume from {}: {e}", publisher.next),
        }
        // Every frame once, with no hole: frames the publisher sent before but never saw
        // acknowledged may be there past `end`, stored by an earlier stream.
        let got = all_frames(&store, "cam-p");
        prop_assert!(got.len() as u64 >= end, "{} frames, {} sent", got.len(), end);
        for (n, f) in got.iter().enumerate() {
            prop_assert_eq!(f.ts_us, frame(n as u64, b"").ts_us, "frame {} is missing or doubled", n);
        }
    }
}
