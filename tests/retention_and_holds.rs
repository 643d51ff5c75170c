//! Retention with a simulated clock, legal holds, explicit erasure, decommissioning, and a
//! sweep interrupted by a crash that completes on restart.

use std::sync::Arc;

use camvault_tests::{all_frames, payload, test_config, FRAME_US, T0_US};
use storage_core::io::{CrashMode, FaultKind, FaultyVfs, MemVfs, Vfs};
use storage_core::retention::HoldRequest;
use storage_core::{Clock, Codec, Env, Error, FrameIn, SimClock, Store, StoreConfig, StreamKind};

const DAY_US: i64 = 86_400_000_000;

fn open(vfs: Arc<dyn Vfs>, clock: &Arc<SimClock>) -> Store {
    open_cfg(vfs, clock, test_config()).expect("open")
}

fn open_cfg(vfs: Arc<dyn Vfs>, clock: &Arc<SimClock>, cfg: StoreConfig) -> storage_core::Result<Store> {
    let c: Arc<dyn Clock> = clock.clone();
    Store::open_with(cfg, Env { vfs, clock: c, kek: None })
}

/// Ten seconds of video for `camera` starting at `t0` (a few 2 s segments).
fn record(store: &Store, clock: &SimClock, camera: &str, t0: i64) {
    // Recorded at `t0`: the clock moves up to it (never back), so the video arrives when it is
    // captured, or later, as a backfill of footage recorded earlier.
    if clock.now_us() < t0 {
        clock.set_us(t0);
    }
    let mut s = store.open_stream_as(camera, Codec::H264, b"cfg", StreamKind::Backfill).expect("stream");
    for n in 0..250u64 {
        let key = n.is_multiple_of(25);
        s.append(FrameIn { ts_us: t0 + n as i64 * FRAME_US, pts_90k: None, key, payload: &payload(camera, n, key) }).expect("append");
    }
    s.close().expect("close");
}

fn count(store: &Store, camera: &str) -> usize {
    all_frames(store, camera).len()
}

#[test]
fn nothing_younger_than_the_floor_is_erased_and_everything_expired_is() {
    let vfs = MemVfs::new();
    let clock = Arc::new(SimClock::new(T0_US));
    let store = open(Arc::new(vfs.clone()), &clock);
    record(&store, &clock, "cam-old", T0_US);
    record(&store, &clock, "cam-new", T0_US + 20 * DAY_US);
    store.set_retention("cam-long", 90, "admin", "evidence-heavy site").expect("longer is allowed");
    record(&store, &clock, "cam-long", T0_US);
    // 29 days later: everything is inside the floor.
    clock.set_us(T0_US + 29 * DAY_US);
    assert_eq!(store.sweep().expect("sweep").erased(), 0);
    // Day 31: cam-old's video is 31 days old; cam-new's 11; cam-long keeps 90 days.
    clock.set_us(T0_US + 31 * DAY_US);
    let report = store.sweep().expect("sweep");
    assert!(report.erased() >= 4, "{report:?}");
    assert_eq!(count(&store, "cam-old"), 0);
    assert_eq!(count(&store, "cam-new"), 250);
    assert_eq!(count(&store, "cam-long"), 250);
    assert!(report.receipts.iter().all(|r| r.intent.segments.iter().all(|s| s.camera == "cam-old")));
    // Idempotent: a second sweep finds nothing.
    assert_eq!(store.sweep().expect("sweep").erased(), 0);
    // The segment files are gone and the erasure left a receipt in the audit log.
    assert!(!vfs.files().iter().any(|p| p.to_string_lossy().contains("/segments/cam-old/")));
    let receipts =
        store.audit_query(&storage_core::audit::AuditQuery { action: Some("erase".into()), ..Default::default() }).expect("audit");
    assert_eq!(receipts.len(), report.receipts.len());
    assert_eq!(receipts[0].record.cameras, vec!["cam-old".to_string()]);
    // Survives a restart.
    drop(store);
    let store = open(Arc::new(vfs.clone()), &clock);
    assert_eq!(count(&store, "cam-old"), 0);
    assert_eq!(count(&store, "cam-new"), 250);
}

#[test]
fn the_floor_cannot_be_configured_or_set_away() {
    let vfs = MemVfs::new();
    let clock = Arc::new(SimClock::new(T0_US));
    let mut cfg = test_config();
    cfg.retention_days_default = 29;
    let err = open_cfg(Arc::new(vfs.clone()), &clock, cfg).map(|_| ()).expect_err("refused at load");
    assert!(err.to_string().contains("30 days"), "{err}");
    let store = open(Arc::new(vfs.clone()), &clock);
    let err = store.set_retention("cam-1", 7, "admin", "save disk").expect_err("below the floor");
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
    assert_eq!(store.retention_days("cam-1").expect("days"), 30);
    // Explicit erasure of unexpired video is refused.
    record(&store, &clock, "cam-1", T0_US);
    let ids: Vec<_> = store.segments("cam-1", i64::MIN + 1, i64::MAX).expect("segments").iter().map(|s| s.id).collect();
    let err = store.erase_segments(&ids, "admin", "make room").expect_err("unexpired");
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
    assert_eq!(count(&store, "cam-1"), 250);
    // Once expired, an explicit erase works.
    clock.set_us(T0_US + 40 * DAY_US);
    let r = store.erase_segments(&ids[..1], "admin", "operator request").expect("expired");
    assert_eq!(r.intent.segments.len(), 1);
    assert!(count(&store, "cam-1") < 250);
}

#[test]
fn holds_pin_video_until_released() {
    let vfs = MemVfs::new();
    let clock = Arc::new(SimClock::new(T0_US));
    let store = open(Arc::new(vfs.clone()), &clock);
    record(&store, &clock, "cam-a", T0_US);
    record(&store, &clock, "cam-b", T0_US);
    // Two overlapping holds on cam-a's first seconds; nothing on cam-b.
    let h1 = store
        .place_hold(HoldRequest {
            case_ref: "HS-2026-001".into(),
            cameras: vec!["cam-a".into()],
            from_us: T0_US,
            to_us: T0_US + 3_000_000,
            placed_by: "investigator-1".into(),
            reason: "traffic accident".into(),
        })
        .expect("hold 1");
    let h2 = store
        .place_hold(HoldRequest {
            case_ref: "HS-2026-002".into(),
            cameras: vec!["cam-a".into()],
            from_us: T0_US + 1_000_000,
            to_us: T0_US + 4_000_000,
            placed_by: "investigator-2".into(),
            reason: "theft".into(),
        })
        .expect("hold 2");
    assert_eq!(h1.protected["cam-a"].len(), 1, "the hold lists what it protects: {:?}", h1.protected);
    assert_eq!(h1.protected["cam-a"][0].start_us, T0_US);
    clock.set_us(T0_US + 100 * DAY_US);
    let r = store.sweep().expect("sweep");
    assert!(r.held_back >= 1);
    assert_eq!(count(&store, "cam-b"), 0, "unheld and expired: erased");
    let kept = count(&store, "cam-a");
    assert!(kept > 0, "held video survives sweeps past its expiry");
    let held_first = all_frames(&store, "cam-a")[0].ts_us;
    assert_eq!(held_first, T0_US);
    // An explicit erase of held video is refused too.
    let held_ids: Vec<_> = store.segments("cam-a", T0_US, T0_US + 1).expect("segments").iter().map(|s| s.id).collect();
    let err = store.erase_segments(&held_ids, "admin", "cleanup").expect_err("held");
    assert!(err.to_string().contains("legal hold"), "{err}");
    // Decommissioning refuses while holds are in force, naming them.
    let err = store.decommission("admin", "disk replacement").expect_err("holds");
    assert!(err.to_string().contains("HS-2026-001") && err.to_string().contains("HS-2026-002"), "{err}");
    // Releasing one overlapping hold is not enough; releasing both is.
    store.release_hold(h1.id, "prosecutor", "case closed").expect("release 1");
    assert_eq!(store.sweep().expect("sweep").erased(), 0, "hold 2 still pins the overlap");
    store.release_hold(h2.id, "prosecutor", "case closed").expect("release 2");
    // Holds and releases survive a restart.
    drop(store);
    let store = open(Arc::new(vfs.clone()), &clock);
    let holds = store.holds(true).expect("holds");
    assert_eq!(holds.len(), 2);
    assert!(holds.iter().all(|h| h.released.as_ref().is_some_and(|r| r.by == "prosecutor")));
    assert!(store.sweep().expect("sweep").erased() > 0);
    assert_eq!(count(&store, "cam-a"), 0);
}

#[test]
fn a_hold_placed_after_part_was_erased_says_what_it_protects() {
    let vfs = MemVfs::new();
    let clock = Arc::new(SimClock::new(T0_US));
    let store = open(Arc::new(vfs.clone()), &clock);
    record(&store, &clock, "cam-h", T0_US);
    record(&store, &clock, "cam-h", T0_US + 10 * DAY_US);
    clock.set_us(T0_US + 35 * DAY_US);
    store.sweep().expect("sweep");
    let hold = store
        .place_hold(HoldRequest {
            case_ref: "HS-late".into(),
            cameras: vec!["cam-h".into()],
            from_us: T0_US,
            to_us: T0_US + 11 * DAY_US,
            placed_by: "investigator".into(),
            reason: "late request".into(),
        })
        .expect("hold");
    let spans = &hold.protected["cam-h"];
    assert_eq!(spans.len(), 1, "only the surviving recording: {spans:?}");
    assert_eq!(spans[0].start_us, T0_US + 10 * DAY_US);
    clock.set_us(T0_US + 365 * DAY_US);
    store.sweep().expect("sweep");
    assert_eq!(count(&store, "cam-h"), 250);
}

#[test]
fn a_hold_placed_during_a_sweep_is_honoured() {
    let vfs = MemVfs::new();
    let clock = Arc::new(SimClock::new(T0_US));
    let store = Arc::new(open(Arc::new(vfs.clone()), &clock));
    for c in 0..20 {
        record(&store, &clock, &format!("cam-{c:02}"), T0_US);
    }
    clock.set_us(T0_US + 60 * DAY_US);
    let sweeper = {
        let store = store.clone();
        std::thread::spawn(move || store.sweep().expect("sweep"))
    };
    let hold = store
        .place_hold(HoldRequest {
            case_ref: "HS-race".into(),
            cameras: vec!["cam-19".into()],
            from_us: T0_US,
            to_us: T0_US + DAY_US,
            placed_by: "investigator".into(),
            reason: "race".into(),
        })
        .expect("hold");
    let report = sweeper.join().expect("sweep thread");
    // Whatever the interleaving: what the hold says it protects is there, and stays.
    let protected: usize = hold.protected.get("cam-19").map_or(0, |s| s.len());
    let after = count(&store, "cam-19");
    if protected > 0 {
        assert_eq!(after, 250);
    } else {
        assert_eq!(after, 0, "the sweep got there first, and the hold says so");
    }
    store.sweep().expect("second sweep");
    assert_eq!(count(&store, "cam-19"), after);
    assert!(report.erased() >= 19 * 4);
}

#[test]
fn a_sweep_interrupted_by_a_crash_completes_on_restart() {
    let mut completed = false;
    for n in 0..400u64 {
        let mem = MemVfs::new();
        let clock = Arc::new(SimClock::new(T0_US));
        {
            let store = open(Arc::new(mem.clone()), &clock);
            record(&store, &clock, "cam-x", T0_US);
            record(&store, &clock, "cam-y", T0_US + 40 * DAY_US);
        }
        clock.set_us(T0_US + 41 * DAY_US);
        let faulty = FaultyVfs::new(Arc::new(mem.clone()));
        let store = open(Arc::new(faulty.clone()), &clock);
        faulty.fail_after(n, FaultKind::Eio);
        let outcome = store.sweep();
        std::mem::forget(store);
        for mode in [CrashMode::LoseUnsynced, CrashMode::KeepUnsynced] {
            let image = mem.crash(mode);
            let store = open(Arc::new(image.clone()), &clock);
            // Whatever was interrupted is finished at open (or never started): one more sweep
            // at most, and the expired camera is gone, the young one whole.
            store.sweep().expect("sweep after restart");
            assert_eq!(count(&store, "cam-x"), 0, "crash at op {n} ({mode:?})");
            assert_eq!(count(&store, "cam-y"), 250, "crash at op {n} ({mode:?})");
            assert!(store.verify_audit().expect("verify").problem.is_none());
            let keys_files =
                image.files().into_iter().filter(|p| p.starts_with("/keys") && p.to_string_lossy().contains("keystore")).count();
            assert_eq!(keys_files, 1, "one key store generation after recovery (op {n}, {mode:?})");
        }
        if outcome.is_ok() {
            completed = true;
            break;
        }
    }
    assert!(completed, "the sweep never completed within the fault budget");
}

#[test]
fn decommission_destroys_every_key_and_signs_a_certificate() {
    let vfs = MemVfs::new();
    let clock = Arc::new(SimClock::new(T0_US));
    let store = open(Arc::new(vfs.clone()), &clock);
    record(&store, &clock, "cam-d", T0_US);
    let err = store.decommission("admin", "retire disk").expect_err("unexpired");
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
    clock.set_us(T0_US + 31 * DAY_US);
    let cert = store.decommission("admin", "retire disk").expect("decommission");
    let pk = store.signing_public_key().expect("pk");
    assert!(cert.verify(&pk));
    let doc: serde_json::Value = serde_json::from_str(&cert.document).expect("json");
    assert!(doc["segment_count"].as_u64().unwrap_or(0) >= 4);
    // A changed byte breaks the signature.
    let mut forged = cert.clone();
    forged.document = forged.document.replacen("retire disk", "retire dusk", 1);
    assert!(!forged.verify(&pk));
    // No segment file, no key store, and writes are refused.
    assert!(!vfs.files().iter().any(|p| p.to_string_lossy().ends_with(".seg") || p.to_string_lossy().contains("keystore")));
    assert!(matches!(store.open_stream("cam-d", Codec::H264, b"c"), Err(Error::Decommissioned(_))));
    let entries =
        store.audit_query(&storage_core::audit::AuditQuery { action: Some("decommission".into()), ..Default::default() }).expect("audit");
    assert_eq!(entries.len(), 1);
}

/// Finding: after a decommission, a restart accepted writes again and created KEK and key store
/// files with the ids the certificate lists as destroyed.
#[test]
fn decommission_survives_a_restart() {
    let vfs = MemVfs::new();
    let clock = Arc::new(SimClock::new(T0_US));
    let store = open(Arc::new(vfs.clone()), &clock);
    record(&store, &clock, "cam-d", T0_US);
    clock.set_us(T0_US + 31 * DAY_US);
    let cert = store.decommission("admin", "retire disk").expect("decommission");
    drop(store);
    let key_files_before: Vec<_> = vfs.files().into_iter().filter(|p| p.starts_with("/keys") || p.starts_with("/kek")).collect();
    for round in 0..2 {
        let store = open(Arc::new(vfs.clone()), &clock);
        let refused = store.open_stream("cam-new", Codec::H264, b"c").map(|_| ()).expect_err("writes refused after a restart");
        assert!(matches!(&refused, Error::Decommissioned(why) if why.contains("decommissioned")), "round {round}: {refused}");
        assert!(matches!(store.read("cam-d", T0_US, T0_US + 1), Err(Error::Decommissioned(_))));
        assert!(matches!(store.decommission("admin", "again"), Err(Error::Decommissioned(_))), "a second decommission is refused");
        assert!(matches!(store.set_retention("cam-d", 60, "admin", "r"), Err(Error::Decommissioned(_))));
        assert!(matches!(store.sweep(), Err(Error::Decommissioned(_))));
        assert_eq!(store.decommission_certificate().expect("certificate"), Some(cert.clone()));
        // The audit log stays readable and verifiable.
        assert!(store.verify_audit().expect("verify").problem.is_none());
        drop(store);
        let key_files: Vec<_> = vfs.files().into_iter().filter(|p| p.starts_with("/keys") || p.starts_with("/kek")).collect();
        assert!(
            !key_files.iter().any(|p| p.to_string_lossy().contains("keystore") || p.to_string_lossy().contains("kek-")),
            "{key_files:?}"
        );
        assert_eq!(key_files, key_files_before, "no key file is created by a later open");
    }
}

/// A decommission interrupted by a crash at any write is finished at the next open, and never
/// leaves a store that accepts writes.
#[test]
fn a_decommission_interrupted_by_a_crash_finishes_at_the_next_open() {
    let mut finished = 0;
    for fault_at in 0..200u64 {
        let mem = MemVfs::new();
        let clock = Arc::new(SimClock::new(T0_US));
        let store = open(Arc::new(mem.clone()), &clock);
        record(&store, &clock, "cam-d", T0_US);
        clock.set_us(T0_US + 31 * DAY_US);
        drop(store);
        let faulty = FaultyVfs::new(Arc::new(mem.clone()));
        let store = open(Arc::new(faulty.clone()), &clock);
        faulty.fail_after(fault_at, FaultKind::Eio);
        let outcome = store.decommission("admin", "retire disk");
        std::mem::forget(store);
        let image = mem.crash(CrashMode::LoseUnsynced);
        // The marker is the commit point: without it nothing was decided and the intent is
        // abandoned (the store may have taken video and holds since the failure).
        let marker_written = image.exists(std::path::Path::new("/keys/decommissioned.json"));
        let reopened = open_cfg(Arc::new(image.clone()), &clock, test_config()).expect("reopen after the crash");
        let decommissioned = matches!(reopened.open_stream("cam-z", Codec::H264, b"c"), Err(Error::Decommissioned(_)));
        assert_eq!(decommissioned, marker_written, "fault at {fault_at}");
        if outcome.is_ok() {
            assert!(decommissioned, "fault at {fault_at}: a finished decommission is durable");
        }
        if decommissioned {
            assert!(!image.files().iter().any(|p| p.to_string_lossy().contains("keystore") || p.to_string_lossy().contains("kek-")));
            assert!(reopened.decommission_certificate().expect("certificate").is_some(), "fault at {fault_at}");
        } else {
            // Nothing was decided durably: the store is whole and its video reads.
            assert_eq!(count(&reopened, "cam-d"), 250, "fault at {fault_at}");
        }
        if outcome.is_ok() {
            finished += 1;
            break;
        }
    }
    assert_eq!(finished, 1, "the decommission completed within the fault budget");
}
