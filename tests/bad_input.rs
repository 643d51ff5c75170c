//! Bad input and limits: each rejected with a clear error, and nothing stored is lost.

use camvault_tests::{all_frames, open_mem, payload, test_config, FRAME_US, T0_US};
use storage_core::io::MemVfs;
use storage_core::{Codec, Error, FrameIn, Store, CODEC_CONFIG_BYTES_MAX, FRAME_BYTES_MAX};

fn stored(store: &Store) -> Vec<(i64, Vec<u8>)> {
    all_frames(store, "cam-1").into_iter().map(|f| (f.ts_us, f.payload.to_vec())).collect()
}

fn seeded() -> (MemVfs, Store, Vec<(i64, Vec<u8>)>) {
    let vfs = MemVfs::new();
    let store = open_mem(&vfs, test_config()).expect("open");
    let mut s = store.open_stream("cam-1", Codec::H264, b"cfg").expect("stream");
    for n in 0..100u64 {
        let key = n % 25 == 0;
        s.append(FrameIn { ts_us: T0_US + n as i64 * FRAME_US, pts_90k: None, key, payload: &payload("cam-1", n, key) }).expect("append");
    }
    s.close().expect("close");
    let before = stored(&store);
    assert_eq!(before.len(), 100);
    (vfs, store, before)
}

#[test]
fn frames_out_of_order_are_refused_and_the_stream_goes_on() {
    let (_vfs, store, before) = seeded();
    let mut s = store.open_stream("cam-1", Codec::H264, b"cfg").expect("stream");
    let t = T0_US + 1_000 * FRAME_US;
    s.append(FrameIn { ts_us: t, pts_90k: None, key: true, payload: b"a" }).expect("append");
    for bad in [t, t - 1] {
        let err = s.append(FrameIn { ts_us: bad, pts_90k: None, key: false, payload: b"b" }).expect_err("backwards");
        assert!(matches!(err, Error::OutOfOrder { .. }), "{err}");
        assert!(err.to_string().contains("not after"), "message says what is wrong: {err}");
    }
    // The stream is still usable after a refused frame.
    s.append(FrameIn { ts_us: t + FRAME_US, pts_90k: None, key: false, payload: b"c" }).expect("append after refusal");
    s.close().expect("close");
    let after = stored(&store);
    assert_eq!(&after[..100], &before[..]);
    assert_eq!(after.len(), 102);
}

#[test]
fn overlapping_stored_video_is_refused() {
    let (_vfs, store, before) = seeded();
    let mut s = store.open_stream("cam-1", Codec::H264, b"cfg").expect("stream");
    for ts in [T0_US, T0_US + 50 * FRAME_US, T0_US + 99 * FRAME_US, T0_US + 10 * FRAME_US + 1] {
        let err = s.append(FrameIn { ts_us: ts, pts_90k: None, key: true, payload: b"intruder" }).expect_err("overlap");
        assert!(matches!(err, Error::Overlap { .. }), "{err}");
    }
    // Before the stored video is fine, but running into it is not.
    s.append(FrameIn { ts_us: T0_US - 10 * FRAME_US, pts_90k: None, key: true, payload: b"earlier" }).expect("before");
    let err = s.append(FrameIn { ts_us: T0_US + 5 * FRAME_US, pts_90k: None, key: false, payload: b"into" }).expect_err("run into");
    assert!(matches!(err, Error::Overlap { .. }), "{err}");
    s.close().expect("close");
    let after = stored(&store);
    assert_eq!(after.len(), 101);
    assert_eq!(&after[1..], &before[..]);
}

#[test]
fn limits_and_malformed_arguments() {
    let (_vfs, store, before) = seeded();
    let mut s = store.open_stream("cam-1", Codec::H264, b"cfg").expect("stream");
    let t = T0_US + 2_000 * FRAME_US;
    let err = s.append(FrameIn { ts_us: t, pts_90k: None, key: true, payload: b"" }).expect_err("empty");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let huge = vec![0u8; FRAME_BYTES_MAX + 1];
    let err = s.append(FrameIn { ts_us: t, pts_90k: None, key: true, payload: &huge }).expect_err("oversized");
    assert!(matches!(err, Error::LimitExceeded { what: "frame bytes", .. }), "{err}");
    // A frame at the limit is fine (a 4K I-frame can exceed 1 MiB).
    let big = vec![7u8; FRAME_BYTES_MAX];
    s.append(FrameIn { ts_us: t, pts_90k: None, key: true, payload: &big }).expect("frame at the limit");
    let err = s.set_codec_config(Codec::H265, &vec![0u8; CODEC_CONFIG_BYTES_MAX + 1]).expect_err("config too big");
    assert!(matches!(err, Error::LimitExceeded { .. }), "{err}");
    s.close().expect("close");
    for cam in ["", "../etc", ".hidden", "cam/1", &"x".repeat(65), "cam 1"] {
        let err = store.open_stream(cam, Codec::H264, b"").expect_err("bad camera id");
        assert!(matches!(err, Error::InvalidArgument(_) | Error::LimitExceeded { .. }), "{cam:?}: {err}");
    }
    assert!(matches!(store.read("cam-1", 10, 10), Err(Error::InvalidArgument(_))));
    assert!(matches!(store.read("no-such-camera", 0, 10), Err(Error::NotFound(_))));
    let after = stored(&store);
    assert_eq!(&after[..100], &before[..]);
    assert_eq!(after[100].1.len(), FRAME_BYTES_MAX);
}

#[test]
fn configuration_outside_limits_is_refused_at_open() {
    let vfs = MemVfs::new();
    let mut c = test_config();
    c.segment_duration_us = 10;
    assert!(matches!(open_mem(&vfs, c).map(|_| ()), Err(Error::InvalidArgument(_))));
    let mut c = test_config();
    c.segment_bytes_max = 1;
    assert!(matches!(open_mem(&vfs, c).map(|_| ()), Err(Error::InvalidArgument(_))));
    let mut c = test_config();
    c.key_dir = c.root.join("segments").join("keys");
    assert!(matches!(open_mem(&vfs, c).map(|_| ()), Err(Error::InvalidArgument(_))));
}

#[test]
fn rot_inside_a_sealed_segment_is_reported_not_repaired() {
    let (vfs, store, before) = seeded();
    let segs = store.segments("cam-1", i64::MIN + 1, i64::MAX).expect("segments");
    assert!(segs.len() >= 2);
    let seg = segs[1].clone();
    let path = vfs.files().into_iter().find(|p| p.to_string_lossy().ends_with(&format!("{}.seg", seg.id))).expect("segment file");
    // Flip bytes in the middle of the segment's records.
    let len = vfs.contents(&path).expect("file").len() as u64;
    assert!(vfs.corrupt(&path, len / 2, b"\xde\xad\xbe\xef"));
    let err = store.read("cam-1", i64::MIN + 1, i64::MAX).expect("plan").find_map(|r| r.err()).expect("damage surfaces");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert_eq!(store.corruptions().len(), 1);
    let scrubbed = store.scrub().expect("scrub");
    assert_eq!(scrubbed.len(), 1);
    assert_eq!(scrubbed[0].segment, Some(seg.id));
    // Reopening neither drops nor rewrites the damaged segment: the other segments read fine and
    // the damaged one still reports.
    drop(store);
    let store = open_mem(&vfs, test_config()).expect("reopen");
    assert_eq!(store.segments("cam-1", i64::MIN + 1, i64::MAX).expect("segments").len(), segs.len());
    let first = camvault_tests::frames(&store, "cam-1", T0_US, seg.first_ts_us);
    assert_eq!(first.len(), (seg.first_ts_us - T0_US) as usize / FRAME_US as usize);
    assert_eq!(
        first.iter().map(|f| f.payload.to_vec()).collect::<Vec<_>>(),
        before[..first.len()].iter().map(|b| b.1.clone()).collect::<Vec<_>>()
    );
    assert_eq!(store.scrub().expect("scrub").len(), 1);
}
