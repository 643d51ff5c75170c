#![allow(clippy::needless_range_loop, reason = "the reference keeps parallel per-camera arrays")]
//! Model test: random appends, flushes, crashes and reopens against a simple in-memory
//! reference (what was appended, and how much of it was reported durable).

use camvault_tests::{all_frames, open_mem, test_config, FRAME_US, T0_US};
use proptest::prelude::*;
use storage_core::io::{CrashMode, MemVfs};
use storage_core::{Codec, FrameIn, Store, StreamWriter};

const CAMERAS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Append { cam: usize, key: bool, gap: bool, len: usize, fill: u8 },
    Flush,
    FlushOne { cam: usize },
    CloseStream { cam: usize },
    Crash(CrashMode),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..CAMERAS, any::<bool>(), prop::bool::weighted(0.05), 1usize..4000, any::<u8>())
            .prop_map(|(cam, key, gap, len, fill)| Op::Append { cam, key, gap, len, fill }),
        2 => Just(Op::Flush),
        2 => (0..CAMERAS).prop_map(|cam| Op::FlushOne { cam }),
        1 => (0..CAMERAS).prop_map(|cam| Op::CloseStream { cam }),
        1 => prop_oneof![Just(CrashMode::LoseUnsynced), Just(CrashMode::TearLastWrite), Just(CrashMode::KeepUnsynced)].prop_map(Op::Crash),
        1 => Just(Op::Reopen),
    ]
}

struct Reference {
    /// Per camera: (ts, key, payload) of every frame appended and not lost to a crash.
    frames: Vec<Vec<(i64, bool, Vec<u8>)>>,
    /// Per camera: how many of `frames` were reported durable.
    durable: Vec<usize>,
    /// Per camera: frames in `frames` before the current stream started.
    stream_base: Vec<usize>,
    next_ts: Vec<i64>,
}

fn cam_name(c: usize) -> String {
    format!("model-{c}")
}

fn compare(store: &Store, r: &mut Reference, after_crash: bool) {
    for c in 0..CAMERAS {
        let got = all_frames(store, &cam_name(c));
        let want = &r.frames[c];
        assert!(got.len() >= r.durable[c], "camera {c}: {} frames read, {} were durable", got.len(), r.durable[c]);
        assert!(got.len() <= want.len(), "camera {c}: {} frames read, only {} appended", got.len(), want.len());
        if !after_crash {
            assert_eq!(got.len(), want.len(), "camera {c}: a clean reopen keeps everything");
        }
        for (g, w) in got.iter().zip(want.iter()) {
            assert_eq!((g.ts_us, g.key, g.payload.as_ref()), (w.0, w.1, w.2.as_slice()), "camera {c}");
        }
        r.frames[c].truncate(got.len());
        r.durable[c] = got.len();
        r.stream_base[c] = got.len();
    }
}

fn run(ops: Vec<Op>) {
    let mut vfs = MemVfs::new();
    let mut store = Some(open_mem(&vfs, test_config()).expect("open"));
    let mut streams: Vec<Option<StreamWriter>> = (0..CAMERAS).map(|_| None).collect();
    let mut r = Reference {
        frames: vec![Vec::new(); CAMERAS],
        durable: vec![0; CAMERAS],
        stream_base: vec![0; CAMERAS],
        next_ts: vec![T0_US; CAMERAS],
    };
    let note_durable = |streams: &Vec<Option<StreamWriter>>, r: &mut Reference| {
        for c in 0..CAMERAS {
            if let Some(s) = &streams[c] {
                r.durable[c] = r.durable[c].max(r.stream_base[c] + s.durable_seq() as usize);
            }
        }
    };
    for op in ops {
        let st = store.as_ref().expect("store");
        match op {
            Op::Append { cam, key, gap, len, fill } => {
                if streams[cam].is_none() {
                    streams[cam] = Some(st.open_stream(&cam_name(cam), Codec::H264, b"cfg").expect("stream"));
                    r.stream_base[cam] = r.frames[cam].len();
                }
                let ts = r.next_ts[cam] + if gap { 30_000_000 } else { FRAME_US };
                let payload: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                let s = streams[cam].as_mut().expect("stream");
                let seq = s.append(FrameIn { ts_us: ts, pts_90k: None, key, payload: &payload }).expect("append");
                r.next_ts[cam] = ts;
                r.frames[cam].push((ts, key, payload));
                assert_eq!(r.stream_base[cam] + seq as usize, r.frames[cam].len());
            }
            Op::Flush => {
                st.flush().expect("flush");
                note_durable(&streams, &mut r);
                for c in 0..CAMERAS {
                    if streams[c].is_some() {
                        assert_eq!(r.durable[c], r.frames[c].len(), "flush makes everything durable");
                    }
                }
            }
            Op::FlushOne { cam } => {
                if let Some(s) = &streams[cam] {
                    s.flush().expect("flush");
                }
                note_durable(&streams, &mut r);
            }
            Op::CloseStream { cam } => {
                if let Some(s) = streams[cam].take() {
                    s.close().expect("close");
                    r.durable[cam] = r.frames[cam].len();
                }
            }
            Op::Crash(mode) => {
                note_durable(&streams, &mut r);
                // The process dies: nothing is closed or flushed.
                for s in streams.iter_mut() {
                    if let Some(s) = s.take() {
                        std::mem::forget(s);
                    }
                }
                std::mem::forget(store.take());
                vfs = vfs.crash(mode);
                let s = open_mem(&vfs, test_config()).expect("reopen after crash");
                compare(&s, &mut r, true);
                assert!(s.corruptions().is_empty());
                store = Some(s);
            }
            Op::Reopen => {
                for s in streams.iter_mut() {
                    if let Some(s) = s.take() {
                        s.close().expect("close");
                    }
                }
                drop(store.take());
                let s = open_mem(&vfs, test_config()).expect("reopen");
                compare(&s, &mut r, false);
                store = Some(s);
            }
        }
    }
    for s in streams.iter_mut() {
        if let Some(s) = s.take() {
            s.close().expect("close");
        }
    }
    let st = store.expect("store");
    compare(&st, &mut r, false);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_reference(ops in prop::collection::vec(op(), 1..120)) {
        run(ops);
    }
}
