//! The disk-image adversary: every byte ever written under the data and key directories (all
//! versions of every file, through the I/O trait) is kept; some segments are erased and the
//! key rotation completes; then every wrapped key ever written is tried with every KEK the
//! provider still holds. Erased segments must not decrypt; kept ones must.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use camvault_tests::{payload, test_config, FRAME_US, T0_US};
use storage_core::io::MemVfs;
use storage_core::keys::{inspect, DataKey, FileKekProvider, KekProvider};
use storage_core::{Clock, Codec, Env, FrameIn, SegmentId, SimClock, Store, StreamKind};

const DAY_US: i64 = 86_400_000_000;

fn record(store: &Store, clock: &SimClock, camera: &str, t0: i64) {
    // Recorded at `t0`: the clock moves up to it (never back), so the video arrives when it is
    // captured, or later, as a backfill of footage recorded earlier.
    if clock.now_us() < t0 {
        clock.set_us(t0);
    }
    let mut s = store.open_stream_as(camera, Codec::H265, b"vps-sps-pps", StreamKind::Backfill).expect("stream");
    for n in 0..150u64 {
        let key = n.is_multiple_of(25);
        s.append(FrameIn { ts_us: t0 + n as i64 * FRAME_US, pts_90k: None, key, payload: &payload(camera, n, key) }).expect("append");
    }
    s.close().expect("close");
}

#[test]
fn erased_segments_stay_unreadable_with_every_key_ever_written() {
    let disk = MemVfs::new();
    disk.record_writes();
    // The KEKs live apart (as in an HSM): the adversary gets only those still held.
    let hsm = MemVfs::new();
    let provider: Arc<dyn KekProvider> = Arc::new(FileKekProvider::open(Arc::new(hsm.clone()), "/hsm").expect("provider"));
    let clock = Arc::new(SimClock::new(T0_US));
    let c: Arc<dyn Clock> = clock.clone();
    let store = Store::open_with(test_config(), Env { vfs: Arc::new(disk.clone()), clock: c, kek: Some(provider.clone()) }).expect("open");
    for cam in ["cam-1", "cam-2", "cam-3"] {
        record(&store, &clock, cam, T0_US);
    }
    record(&store, &clock, "cam-1", T0_US + 20 * DAY_US);
    // A hold keeps cam-3's old video.
    store
        .place_hold(storage_core::retention::HoldRequest {
            case_ref: "HS-9".into(),
            cameras: vec!["cam-3".into()],
            from_us: T0_US,
            to_us: T0_US + DAY_US,
            placed_by: "investigator".into(),
            reason: "case".into(),
        })
        .expect("hold");
    clock.set_us(T0_US + 35 * DAY_US);
    let first = store.sweep().expect("sweep");
    // A later sweep and more writes: several rotations and generations in the history.
    record(&store, &clock, "cam-2", T0_US + 36 * DAY_US);
    clock.set_us(T0_US + 60 * DAY_US);
    let second = store.sweep().expect("sweep");
    let erased: BTreeSet<u64> =
        first.receipts.iter().chain(&second.receipts).flat_map(|r| r.intent.segments.iter().map(|s| s.segment)).collect();
    assert!(erased.len() >= 6, "erased {erased:?}");
    drop(store);

    // Rebuild every version of every segment file from the write journal.
    let journal = disk.journal();
    let mut files: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    let mut headers = Vec::new();
    let mut wrapped_dks: Vec<(SegmentId, Vec<u8>)> = Vec::new();
    for w in &journal {
        let name = w.path.to_string_lossy().to_string();
        if name.ends_with(".seg") {
            let f = files.entry(w.path.clone()).or_default();
            let end = w.offset as usize + w.data.len();
            if f.len() < end {
                f.resize(end, 0);
            }
            f[w.offset as usize..end].copy_from_slice(&w.data);
        }
        if name.starts_with("/keys/keystore") {
            if w.offset == 0 {
                if let Some(h) = inspect::header(&w.data) {
                    headers.push(h);
                }
            }
            // Records sit at 160 + 96k.
            for p in w.offset as usize..w.offset as usize + w.data.len() {
                if p >= 160 && (p - 160) % 96 == 0 {
                    let i = p - w.offset as usize;
                    if let Some(r) = w.data.get(i..i + 96).and_then(inspect::record) {
                        wrapped_dks.push(r);
                    }
                }
            }
        }
    }
    assert!(headers.len() >= 3, "several key store generations were written: {}", headers.len());
    assert!(!wrapped_dks.is_empty());
    // Every GK that any still-held KEK unwraps, then every data key those GKs unwrap.
    let held = provider.list_keks().expect("list");
    let mut gks: Vec<DataKey> = Vec::new();
    for (generation, _kek, wrapped_gk) in &headers {
        for k in &held {
            if let Ok(gk) = provider.unwrap(*k, wrapped_gk, &inspect::gk_aad(*generation)) {
                gks.push(gk);
            }
        }
    }
    let mut dks: Vec<(SegmentId, DataKey)> = Vec::new();
    for gk in &gks {
        for (seg, w) in &wrapped_dks {
            if let Some(dk) = inspect::unwrap_data_key(gk, *seg, w) {
                dks.push((*seg, dk));
            }
        }
    }
    let mut kept_checked = 0;
    for (path, bytes) in &files {
        let id = u64::from_str_radix(path.file_stem().and_then(|s| s.to_str()).unwrap_or_default(), 16).expect("segment id");
        let opened = dks.iter().any(|(_, dk)| storage_core::testing::key_opens_segment(bytes, dk));
        if erased.contains(&id) {
            assert!(!opened, "erased segment {id} ({}) still decrypts", path.display());
        } else {
            assert!(opened, "kept segment {id} ({}) must decrypt", path.display());
            kept_checked += 1;
        }
    }
    assert!(kept_checked >= 4, "kept segments checked: {kept_checked}");
    assert_eq!(held.len(), 1, "only the current KEK survives");
    assert_eq!(gks.len(), 1, "only the current generation's GK is reachable");
    // The data keys themselves never reached the disk in clear.
    for w in &journal {
        for (_, dk) in &dks {
            assert!(!w.data.windows(32).any(|x| x == dk.expose()), "a data key in clear in {}", w.path.display());
        }
    }
}
