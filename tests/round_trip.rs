//! Frames from many cameras read back byte-exact by camera and time range.

use camvault_tests::{all_frames, frames, open_mem, payload, test_config, FRAME_US, T0_US};
use storage_core::io::MemVfs;
use storage_core::{Codec, FrameIn, ReadItem, Store, StoreConfig};

const CAMERAS: usize = 12;
/// 10 s per camera at 25 fps with 2 s segments: several segments each.
const FRAMES: u64 = 250;

fn fill(store: &Store) {
    let mut streams: Vec<_> =
        (0..CAMERAS).map(|c| store.open_stream(&format!("cam-{c:03}"), Codec::H264, b"sps-pps").expect("open")).collect();
    // Interleave cameras the way a server sees them.
    for n in 0..FRAMES {
        for (c, s) in streams.iter_mut().enumerate() {
            let cam = format!("cam-{c:03}");
            let key = n % 25 == 0;
            let p = payload(&cam, n, key);
            let seq = s
                .append(FrameIn { ts_us: T0_US + n as i64 * FRAME_US + c as i64, pts_90k: Some(n as i64 * 3600), key, payload: &p })
                .expect("append");
            assert_eq!(seq, n + 1);
        }
    }
    for s in streams {
        s.close().expect("close");
    }
}

#[test]
fn many_cameras_round_trip_byte_exact() {
    let vfs = MemVfs::new();
    let store = open_mem(&vfs, test_config()).expect("open");
    fill(&store);
    for c in 0..CAMERAS {
        let cam = format!("cam-{c:03}");
        let got = all_frames(&store, &cam);
        assert_eq!(got.len() as u64, FRAMES, "{cam}");
        for (n, f) in got.iter().enumerate() {
            let n = n as u64;
            assert_eq!(f.ts_us, T0_US + n as i64 * FRAME_US + c as i64);
            assert_eq!(f.pts_90k, Some(n as i64 * 3600));
            assert_eq!(f.key, n.is_multiple_of(25));
            assert_eq!(f.payload.as_ref(), payload(&cam, n, f.key).as_slice());
        }
        let segs = store.segments(&cam, i64::MIN + 1, i64::MAX).expect("segments");
        assert!(segs.len() >= 4, "{cam}: expected several 2 s segments, got {}", segs.len());
        assert!(segs.iter().all(|s| s.sealed.is_some()));
    }
    // The same after a clean reopen: the index comes back from the catalog.
    drop(store);
    let store = open_mem(&vfs, test_config()).expect("reopen");
    assert_eq!(store.cameras().len(), CAMERAS);
    assert_eq!(all_frames(&store, "cam-007").len() as u64, FRAMES);
}

#[test]
fn range_starts_at_the_key_frame_at_or_before_from() {
    let vfs = MemVfs::new();
    let store = open_mem(&vfs, test_config()).expect("open");
    fill(&store);
    let cam = "cam-000";
    // Frame 37 is inside the GOP that starts at frame 25.
    let from = T0_US + 37 * FRAME_US;
    let to = T0_US + 40 * FRAME_US;
    let got = frames(&store, cam, from, to);
    let first = (got[0].ts_us - T0_US) / FRAME_US;
    assert_eq!(first, 25, "reading starts at the key frame before `from`");
    assert!(got[0].key);
    assert_eq!(got.last().map(|f| (f.ts_us - T0_US) / FRAME_US), Some(39), "`to` is exclusive");
    assert_eq!(got.len(), 15);
}

#[test]
fn ranges_at_segment_boundaries() {
    let vfs = MemVfs::new();
    let store = open_mem(&vfs, test_config()).expect("open");
    fill(&store);
    let cam = "cam-001";
    let segs = store.segments(cam, i64::MIN + 1, i64::MAX).expect("segments");
    for pair in segs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        // [last frame of a, first frame of b + 1): both frames, starting from a's last key frame.
        let got = frames(&store, cam, b.first_ts_us, b.first_ts_us + 1);
        assert_eq!(got.len(), 1, "a range starting exactly at a segment's first frame");
        assert_eq!(got[0].ts_us, b.first_ts_us);
        assert!(got[0].key, "segments roll at key frames");
        let got = frames(&store, cam, a.last_ts_us, b.first_ts_us + 1);
        assert_eq!(got.last().map(|f| f.ts_us), Some(b.first_ts_us));
        assert!(got.iter().any(|f| f.ts_us == a.last_ts_us));
        assert!(got[0].key);
        // Ending exactly at b's first frame excludes it.
        let got = frames(&store, cam, a.last_ts_us, b.first_ts_us);
        assert_eq!(got.last().map(|f| f.ts_us), Some(a.last_ts_us));
    }
}

#[test]
fn gaps_show_in_recordings_and_reads() {
    let vfs = MemVfs::new();
    let store = open_mem(&vfs, test_config()).expect("open");
    let mut s = store.open_stream("cam-gap", Codec::H265, b"vps-sps-pps").expect("open");
    let mut ts = Vec::new();
    for n in 0..50u64 {
        ts.push(T0_US + n as i64 * FRAME_US);
    }
    // A 60 s outage (longer than the 5 s gap threshold), then 50 more frames.
    let resume = T0_US + 60_000_000;
    for n in 0..50u64 {
        ts.push(resume + n as i64 * FRAME_US);
    }
    for (n, &t) in ts.iter().enumerate() {
        let key = n % 25 == 0;
        s.append(FrameIn { ts_us: t, pts_90k: None, key, payload: &payload("cam-gap", n as u64, key) }).expect("append");
    }
    s.close().expect("close");
    let rec = store.recordings("cam-gap", T0_US - 1_000_000, resume + 10_000_000).expect("recordings");
    assert_eq!(rec.spans.len(), 2, "{rec:?}");
    assert_eq!(rec.spans[0].start_us, T0_US);
    assert_eq!(rec.spans[0].end_us, T0_US + 49 * FRAME_US);
    assert_eq!(rec.spans[1].start_us, resume);
    assert_eq!(rec.gaps.len(), 3, "before, between, after: {rec:?}");
    assert_eq!(rec.gaps[1].start_us, T0_US + 49 * FRAME_US);
    assert_eq!(rec.gaps[1].end_us, resume);
    // A range wholly inside the gap holds nothing.
    let inside = frames(&store, "cam-gap", T0_US + 10_000_000, T0_US + 20_000_000);
    assert!(inside.is_empty());
    // A range starting in the gap begins with the first frame after it.
    let after = frames(&store, "cam-gap", T0_US + 30_000_000, resume + 3 * FRAME_US);
    assert_eq!(after.iter().map(|f| f.ts_us).collect::<Vec<_>>(), vec![resume, resume + FRAME_US, resume + 2 * FRAME_US]);
    assert!(after.iter().all(|f| f.codec == Codec::H265));
}

#[test]
fn codec_config_changes_come_back_in_order() {
    let vfs = MemVfs::new();
    let store = open_mem(&vfs, test_config()).expect("open");
    let mut s = store.open_stream("cam-cfg", Codec::H264, b"config-A").expect("open");
    for n in 0..60u64 {
        if n == 30 {
            // The camera switches to H.265 at a key frame.
            s.set_codec_config(Codec::H265, b"config-B").expect("config");
        }
        let key = n % 10 == 0;
        s.append(FrameIn { ts_us: T0_US + n as i64 * FRAME_US, pts_90k: None, key, payload: &payload("cam-cfg", n, key) }).expect("append");
    }
    s.close().expect("close");
    let items: Vec<ReadItem> = store.read("cam-cfg", T0_US, T0_US + 60 * FRAME_US).expect("read").collect::<Result<_, _>>().expect("items");
    let mut config = None;
    let mut seen_b = false;
    for it in &items {
        match it {
            ReadItem::Config(c) => config = Some((c.codec, c.data.clone())),
            ReadItem::Frame(f) => {
                let (codec, data) = config.clone().expect("a config precedes every frame");
                let n = (f.ts_us - T0_US) / FRAME_US;
                if n >= 30 {
                    assert_eq!((codec, data.as_ref()), (Codec::H265, &b"config-B"[..]));
                    assert_eq!(f.codec, Codec::H265);
                    seen_b = true;
                } else {
                    assert_eq!((codec, data.as_ref()), (Codec::H264, &b"config-A"[..]));
                }
            }
        }
    }
    assert!(seen_b);
    // Starting mid-way after the change, the first item is config B.
    let mid: Vec<ReadItem> =
        store.read("cam-cfg", T0_US + 45 * FRAME_US, T0_US + 46 * FRAME_US).expect("read").collect::<Result<_, _>>().expect("items");
    match &mid[0] {
        ReadItem::Config(c) => assert_eq!(c.data.as_ref(), b"config-B"),
        other => panic!("expected config first, got {other:?}"),
    }
}

#[test]
fn late_stream_fills_the_past_while_live_continues() {
    let vfs = MemVfs::new();
    let store = open_mem(&vfs, test_config()).expect("open");
    // Live from now (T0); the edge site catches up on the hour before, as a backfill.
    let live_t0 = T0_US;
    let late_t0 = T0_US - 3_600_000_000;
    let mut live = store.open_stream("cam-edge", Codec::H264, b"c").expect("live");
    let mut late = store.open_stream_as("cam-edge", Codec::H264, b"c", storage_core::StreamKind::Backfill).expect("late");
    for n in 0..250u64 {
        let key = n % 25 == 0;
        live.append(FrameIn { ts_us: live_t0 + n as i64 * FRAME_US, pts_90k: None, key, payload: &payload("live", n, key) }).expect("live");
        late.append(FrameIn { ts_us: late_t0 + n as i64 * FRAME_US, pts_90k: None, key, payload: &payload("late", n, key) }).expect("late");
    }
    // The catch-up stream may not run into the live stream's video.
    let err = late.append(FrameIn { ts_us: live_t0 + 5 * FRAME_US, pts_90k: None, key: true, payload: b"x" }).expect_err("overlap");
    assert!(matches!(err, storage_core::Error::Overlap { .. }), "{err}");
    live.close().expect("close");
    late.close().expect("close");
    let all = all_frames(&store, "cam-edge");
    assert_eq!(all.len(), 500);
    assert!(all.windows(2).all(|w| w[0].ts_us < w[1].ts_us));
    assert_eq!(all[0].payload.as_ref(), payload("late", 0, true).as_slice());
    assert_eq!(all[250].payload.as_ref(), payload("live", 0, true).as_slice());
}

#[test]
fn real_file_system_round_trip_with_group_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = StoreConfig::new(dir.path().join("data"));
    cfg.flush = storage_core::FlushPolicy::Interval(std::time::Duration::from_millis(20));
    let store = Store::open(cfg.clone()).expect("open");
    // Footage from the start of 2026 on the system clock: a backfill.
    let mut s = store.open_stream_as("cam-real", Codec::H264, b"cfg", storage_core::StreamKind::Backfill).expect("stream");
    let mut last = 0;
    for n in 0..100u64 {
        let key = n % 25 == 0;
        last = s
            .append(FrameIn { ts_us: T0_US + n as i64 * FRAME_US, pts_90k: None, key, payload: &payload("cam-real", n, key) })
            .expect("append");
    }
    assert!(s.wait_durable(last, std::time::Duration::from_secs(30)).expect("wait"), "the group commit makes appends durable");
    // Durable frames are readable while the stream is still open.
    assert_eq!(all_frames(&store, "cam-real").len(), 100);
    s.close().expect("close");
    drop(store);
    let store = Store::open(cfg).expect("reopen");
    let got = all_frames(&store, "cam-real");
    assert_eq!(got.len(), 100);
    assert_eq!(got[99].payload.as_ref(), payload("cam-real", 99, false).as_slice());
}

#[test]
fn streams_starting_together_share_creation_commits_and_all_read_back() {
    let vfs = MemVfs::new();
    let store = std::sync::Arc::new(open_mem(&vfs, test_config()).expect("open"));
    let threads: Vec<_> = (0..16)
        .map(|c| {
            let store = store.clone();
            std::thread::spawn(move || {
                let cam = format!("burst-{c:02}");
                let mut s = store.open_stream(&cam, Codec::H264, b"cfg").expect("stream");
                for n in 0..60u64 {
                    let key = n.is_multiple_of(25);
                    s.append(FrameIn { ts_us: T0_US + n as i64 * FRAME_US, pts_90k: None, key, payload: &payload(&cam, n, key) })
                        .expect("append");
                }
                s.close().expect("close");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let mut ids = std::collections::BTreeSet::new();
    for c in 0..16 {
        let cam = format!("burst-{c:02}");
        let got = all_frames(&store, &cam);
        assert_eq!(got.len(), 60, "{cam}");
        for (n, f) in got.iter().enumerate() {
            assert_eq!(f.payload.as_ref(), payload(&cam, n as u64, f.key).as_slice());
            ids.insert(f.segment);
        }
    }
    // Every segment has its own id (and key): 16 cameras x 2 segments (2 s roll at 60 frames).
    assert_eq!(ids.len(), 32);
    // And the same after a crash: the batched key and catalog records were durable.
    drop(store);
    let image = vfs.crash(storage_core::io::CrashMode::LoseUnsynced);
    let store = open_mem(&image, test_config()).expect("reopen");
    assert_eq!(all_frames(&store, "burst-07").len(), 60);
}

/// `append_may_wait` (the gRPC server moves only those appends off its workers) is true exactly
/// for the appends that create or seal a segment, or fsync per key frame: rolls by duration at
/// key frames, by a gap, by the size cap.
#[test]
fn append_may_wait_is_true_exactly_for_the_appends_that_touch_the_disk() {
    use std::sync::atomic::Ordering::Relaxed;
    for per_key_frame in [false, true] {
        let vfs = MemVfs::new();
        let mut cfg = test_config();
        cfg.segment_bytes_max = storage_core::SEGMENT_BYTES_MIN;
        if per_key_frame {
            cfg.flush = storage_core::FlushPolicy::EveryKeyFrame;
        }
        let store = open_mem(&vfs, cfg).expect("open");
        let mut w = store.open_stream("cam", Codec::H264, b"sps-pps").expect("open stream");
        let disk_steps = || store.metrics().segments_created.load(Relaxed) + store.metrics().segments_sealed.load(Relaxed);
        let (mut ts, mut waited) = (T0_US, 0);
        for n in 0..400u64 {
            let key = n % 25 == 0;
            // A 6 s gap (over the 5 s gap limit) at frame 210, between two key frames.
            if n == 210 {
                ts += 6_000_000;
            }
            // Five 15 MiB predicted frames from 301: the 64 MiB size cap rolls on the fifth.
            let p = if (301..306).contains(&n) { vec![n as u8; 15 << 20] } else { payload("cam", n, key) };
            let may_wait = w.append_may_wait(ts, key, p.len());
            let before = disk_steps();
            w.append(FrameIn { ts_us: ts, pts_90k: None, key, payload: &p }).expect("append");
            let touched = disk_steps() != before || (per_key_frame && key);
            assert_eq!(may_wait, touched, "frame {n} (key {key}, per key frame fsync {per_key_frame})");
            waited += u64::from(may_wait);
            ts += FRAME_US;
        }
        // Creation, rolls every 2 s at key frames, the gap and the size cap: several of each.
        assert!(waited >= 8, "{waited}");
        assert!(waited < 400 / 2, "{waited}");
        w.close().expect("close");
    }
}
