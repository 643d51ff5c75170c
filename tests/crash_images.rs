//! Simulated crashes at every step of the write path.
//!
//! The workload runs on a file system that fails every mutating operation after the first `n`
//! (so the crash lands after each create, write, fsync, rename and unlink in turn); the disk is
//! then rebuilt as a crash would leave it (unsynced writes lost, the last write torn, or all
//! writes kept) and the store reopened. Every frame reported durable must read back byte-exact,
//! nothing that was never appended may appear, and the store must take new writes.

use std::sync::Arc;

use camvault_tests::{all_frames, open_mem, open_on, payload, test_config, FRAME_US, T0_US};
use storage_core::io::{CrashMode, FaultKind, FaultyVfs, MemVfs, Vfs};
use storage_core::{Codec, FrameIn, Store};

const CAMERAS: [&str; 3] = ["cam-a", "cam-b", "cam-c"];
const FRAMES: u64 = 130;

/// What the workload knew when it stopped: per camera, frames appended and frames reported durable.
struct Outcome {
    appended: Vec<u64>,
    durable: Vec<u64>,
    completed: bool,
}

fn frame_ts(c: usize, n: u64) -> i64 {
    T0_US + n as i64 * FRAME_US + c as i64
}

fn workload(store: &Store) -> Outcome {
    let mut out = Outcome { appended: vec![0; CAMERAS.len()], durable: vec![0; CAMERAS.len()], completed: false };
    let mut streams = Vec::new();
    for cam in CAMERAS {
        match store.open_stream(cam, Codec::H264, b"sps-pps") {
            Ok(s) => streams.push(s),
            Err(_) => return out,
        }
    }
    for n in 0..FRAMES {
        for (c, s) in streams.iter_mut().enumerate() {
            let key = n % 25 == 0;
            let p = payload(CAMERAS[c], n, key);
            let res = s.append(FrameIn { ts_us: frame_ts(c, n), pts_90k: None, key, payload: &p });
            out.durable[c] = s.durable_seq();
            match res {
                Ok(seq) => out.appended[c] = seq,
                Err(_) => return out,
            }
        }
        if n % 10 == 9 {
            let flushed = store.flush();
            // A server acknowledges whatever durable_seq says, even when a flush failed.
            for (c, s) in streams.iter().enumerate() {
                out.durable[c] = s.durable_seq();
            }
            if flushed.is_err() {
                return out;
            }
        }
    }
    for (c, s) in streams.into_iter().enumerate() {
        if s.close().is_err() {
            return out;
        }
        out.durable[c] = out.appended[c];
    }
    out.completed = true;
    out
}

/// Checks a reopened store against what the workload reported, then writes to it.
fn check(store: &Store, out: &Outcome, what: &str) {
    let mut max_seg = 0;
    for (c, cam) in CAMERAS.iter().enumerate() {
        let got = all_frames(store, cam);
        assert!(got.len() as u64 >= out.durable[c], "{what}: {cam} lost durable frames: {} < {}", got.len(), out.durable[c]);
        assert!(got.len() as u64 <= out.appended[c], "{what}: {cam} shows {} frames but only {} were appended", got.len(), out.appended[c]);
        for (n, f) in got.iter().enumerate() {
            let n = n as u64;
            assert_eq!(f.ts_us, frame_ts(c, n), "{what}: {cam} frame {n}");
            assert_eq!(f.payload.as_ref(), payload(cam, n, n.is_multiple_of(25)).as_slice(), "{what}: {cam} frame {n} bytes");
            max_seg = max_seg.max(f.segment.0);
        }
    }
    // The store accepts new writes, into new segments, after what the crash left.
    for (c, cam) in CAMERAS.iter().enumerate() {
        let mut s = store.open_stream(cam, Codec::H264, b"sps-pps").expect("open after crash");
        let ts = frame_ts(c, FRAMES + 1000);
        s.append(FrameIn { ts_us: ts, pts_90k: None, key: true, payload: b"after the crash" })
            .unwrap_or_else(|e| panic!("{what}: append after crash: {e}"));
        s.close().expect("close after crash");
        let got = all_frames(store, cam);
        let last = got.last().expect("new frame");
        assert_eq!(last.payload.as_ref(), b"after the crash");
        assert!(last.segment.0 > max_seg, "{what}: new frames must go to a new segment");
    }
    assert!(store.corruptions().is_empty(), "{what}: a crash is not corruption: {:?}", store.corruptions());
}

#[test]
fn crash_after_every_mutating_operation() {
    let mut n = 0u64;
    let mut steps = 0;
    loop {
        let mem = MemVfs::new();
        let faulty = FaultyVfs::new(Arc::new(mem.clone()));
        faulty.fail_after(n, FaultKind::Eio);
        let out = match open_on(Arc::new(faulty.clone()), test_config()) {
            Ok(store) => {
                let out = workload(&store);
                // A store that hit an I/O error is abandoned as a crashed process would be.
                std::mem::forget(store);
                out
            }
            Err(_) => Outcome { appended: vec![0; 3], durable: vec![0; 3], completed: false },
        };
        for mode in [CrashMode::LoseUnsynced, CrashMode::TearLastWrite, CrashMode::KeepUnsynced] {
            let image = mem.crash(mode);
            let store = open_mem(&image, test_config()).unwrap_or_else(|e| panic!("reopen after crash at op {n} ({mode:?}): {e}"));
            check(&store, &out, &format!("crash at op {n} ({mode:?})"));
        }
        steps += 1;
        if out.completed {
            break;
        }
        n += 1;
        assert!(n < 5_000, "workload never completed");
    }
    // The workload has many steps (creates, writes, fsyncs, seals); each one was a crash point.
    assert!(steps > 100, "only {steps} crash points");
}

#[test]
fn crash_during_recovery_then_recover_again() {
    // Leave streams open (no close) so recovery has work, then crash inside recovery itself.
    let mem = MemVfs::new();
    let out = {
        let store = open_mem(&mem, test_config()).expect("open");
        let mut streams: Vec<_> = CAMERAS.iter().map(|c| store.open_stream(c, Codec::H264, b"sps-pps").expect("open")).collect();
        let mut out = Outcome { appended: vec![0; 3], durable: vec![0; 3], completed: false };
        for n in 0..70u64 {
            for (c, s) in streams.iter_mut().enumerate() {
                let key = n % 25 == 0;
                out.appended[c] =
                    s.append(FrameIn { ts_us: frame_ts(c, n), pts_90k: None, key, payload: &payload(CAMERAS[c], n, key) }).expect("append");
            }
        }
        store.flush().expect("flush");
        for (c, s) in streams.iter().enumerate() {
            out.durable[c] = s.durable_seq();
            assert_eq!(out.durable[c], 70);
        }
        std::mem::forget(streams);
        std::mem::forget(store);
        out
    };
    let image = mem.crash(CrashMode::TearLastWrite);
    for m in 0..40u64 {
        let try_image = image.crash(CrashMode::KeepUnsynced);
        let faulty = FaultyVfs::new(Arc::new(try_image.clone()));
        faulty.fail_after(m, FaultKind::Eio);
        if let Ok(store) = open_on(Arc::new(faulty) as Arc<dyn Vfs>, test_config()) {
            std::mem::forget(store);
        }
        for mode in [CrashMode::LoseUnsynced, CrashMode::TearLastWrite] {
            let again = try_image.crash(mode);
            let store = open_mem(&again, test_config()).unwrap_or_else(|e| panic!("second recovery after fault at {m}: {e}"));
            check(&store, &out, &format!("recovery crashed at op {m} ({mode:?})"));
        }
    }
}

#[test]
fn failed_fsync_poisons_the_stream_for_good() {
    let mem = MemVfs::new();
    let faulty = FaultyVfs::new(Arc::new(mem.clone()));
    let store = open_on(Arc::new(faulty.clone()), test_config()).expect("open");
    let mut s = store.open_stream("cam-p", Codec::H264, b"c").expect("stream");
    for n in 0..10u64 {
        s.append(FrameIn { ts_us: frame_ts(0, n), pts_90k: None, key: n == 0, payload: &payload("cam-p", n, n == 0) }).expect("append");
    }
    // The next write succeeds and its fsync fails.
    faulty.fail_after(1, FaultKind::Eio);
    assert!(s.flush().is_err());
    faulty.heal();
    // Healing the device does not make the writer trust it again.
    let err = s.append(FrameIn { ts_us: frame_ts(0, 11), pts_90k: None, key: false, payload: b"x" }).expect_err("poisoned");
    assert!(matches!(err, storage_core::Error::Poisoned(_)), "{err}");
    assert!(matches!(s.flush(), Err(storage_core::Error::Poisoned(_))));
    assert_eq!(s.durable_seq(), 0, "nothing was acknowledged durable");
    assert_eq!(store.metrics().fsync_failures.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn full_disk_refuses_new_writes_and_recovers_by_itself() {
    let mem = MemVfs::new();
    let faulty = FaultyVfs::new(Arc::new(mem.clone()));
    let store = open_on(Arc::new(faulty.clone()), test_config()).expect("open");
    let mut s = store.open_stream("cam-full", Codec::H264, b"c").expect("stream");
    for n in 0..50u64 {
        s.append(FrameIn { ts_us: frame_ts(0, n), pts_90k: None, key: n % 25 == 0, payload: &payload("cam-full", n, n % 25 == 0) })
            .expect("append");
    }
    s.close().expect("close");
    faulty.fail_after(0, FaultKind::NoSpace);
    let mut s2 = store.open_stream("cam-full", Codec::H264, b"c").expect("stream");
    let err = s2.append(FrameIn { ts_us: frame_ts(0, 100), pts_90k: None, key: true, payload: b"y" }).expect_err("full");
    assert!(err.is_no_space(), "{err}");
    assert!(store.is_out_of_space());
    // Nothing stored was touched.
    assert_eq!(all_frames(&store, "cam-full").len(), 50);
    faulty.heal();
    // The same stream takes the frame once space returns.
    s2.append(FrameIn { ts_us: frame_ts(0, 100), pts_90k: None, key: true, payload: b"y" }).expect("space is back");
    assert!(!store.is_out_of_space());
    s2.close().expect("close");
    assert_eq!(all_frames(&store, "cam-full").len(), 51);
}

#[test]
fn full_disk_mid_segment_holds_the_batch_refuses_loudly_and_loses_nothing() {
    let mem = MemVfs::new();
    let faulty = FaultyVfs::new(Arc::new(mem.clone()));
    let store = open_on(Arc::new(faulty.clone()), test_config()).expect("open");
    let mut s = store.open_stream("cam-f", Codec::H264, b"c").expect("stream");
    let big = vec![0x5au8; 200_000];
    let mut accepted = 0u64;
    s.append(FrameIn { ts_us: frame_ts(0, 0), pts_90k: None, key: true, payload: &big }).expect("first frame");
    accepted += 1;
    faulty.fail_after(0, FaultKind::NoSpace);
    // Appends are buffered until the bound, then refused with NoSpace: never poisoned.
    let mut refused = None;
    for n in 1..100u64 {
        match s.append(FrameIn { ts_us: frame_ts(0, n), pts_90k: None, key: false, payload: &big }) {
            Ok(_) => accepted += 1,
            Err(e) => {
                refused = Some((n, e));
                break;
            }
        }
    }
    let (n, err) = refused.expect("a full disk refuses writes");
    assert!(err.is_no_space(), "{err}");
    assert!(matches!(s.flush(), Err(e) if e.is_no_space()));
    assert!(store.is_out_of_space(), "the condition is visible");
    assert!(store.metrics().no_space_refusals.load(std::sync::atomic::Ordering::Relaxed) > 0);
    faulty.heal();
    // Space is back: the same stream goes on, and everything accepted becomes durable.
    s.append(FrameIn { ts_us: frame_ts(0, n), pts_90k: None, key: false, payload: &big }).expect("resumes");
    accepted += 1;
    assert_eq!(s.flush().expect("flush"), accepted);
    assert!(!store.is_out_of_space(), "cleared once writes succeed again");
    s.close().expect("close");
    let got = all_frames(&store, "cam-f");
    assert_eq!(got.len() as u64, accepted);
    assert!(got.iter().all(|f| f.payload.as_ref() == big.as_slice()));
}
