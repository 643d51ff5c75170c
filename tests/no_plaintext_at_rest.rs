//! No plaintext at rest: after writing frames and codec configurations that carry a known
//! marker, no file under the store's directories holds the marker or any data key in clear.

use std::path::Path;
use std::sync::Arc;

use camvault_tests::{open_mem, test_config, FRAME_US, T0_US};
use storage_core::io::{MemVfs, StdVfs, Vfs};
use storage_core::keys::{FileKekProvider, KeyStore};
use storage_core::{Codec, FrameIn, Store, StoreConfig};

const MARKER: &[u8] = b"PLAINTEXT-MARKER-7d1e";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Writes marked frames (some left in an open, unsealed segment) and returns every segment id.
fn write_marked(store: &Store) -> Vec<(String, storage_core::SegmentId)> {
    let mut payload = Vec::new();
    for _ in 0..200 {
        payload.extend_from_slice(MARKER);
    }
    let mut ids = Vec::new();
    for cam in ["cam-x", "cam-y"] {
        // A backfill: on the real file system the store's clock is the system's, not T0.
        let mut s = store
            .open_stream_as(cam, Codec::H265, &[MARKER, b"-vps-sps-pps"].concat(), storage_core::StreamKind::Backfill)
            .expect("stream");
        for n in 0..120i64 {
            s.append(FrameIn { ts_us: T0_US + n * FRAME_US, pts_90k: Some(n * 3600), key: n % 25 == 0, payload: &payload })
                .expect("append");
        }
        s.flush().expect("flush");
        // Leave the last segment open: its bytes on disk must be sealed too.
        std::mem::forget(s);
        for seg in store.segments(cam, i64::MIN + 1, i64::MAX).expect("segments") {
            ids.push((cam.to_string(), seg.id));
        }
    }
    ids
}

fn assert_clean(files: Vec<(String, Vec<u8>)>, keys: &[[u8; 32]]) {
    assert!(files.len() >= 6, "expected segment, sidecar, catalog and key files, got {}", files.len());
    for (name, bytes) in &files {
        assert!(!contains(bytes, MARKER), "{name} holds plaintext video");
        for k in keys {
            assert!(!contains(bytes, k), "{name} holds a data key in clear");
        }
    }
}

#[test]
fn in_memory_store_keeps_no_plaintext() {
    let vfs = MemVfs::new();
    let cfg = test_config();
    let store = open_mem(&vfs, cfg.clone()).expect("open");
    let ids = write_marked(&store);
    assert!(ids.len() >= 4);
    // The keys, unwrapped the way a reader would, to search for them.
    let kek = Arc::new(FileKekProvider::open(Arc::new(vfs.clone()), &cfg.kek_dir).expect("kek"));
    let ks = KeyStore::open(Arc::new(vfs.clone()), &cfg.key_dir, kek, 0, false).expect("keys");
    let keys: Vec<[u8; 32]> = ids.iter().map(|(_, id)| *ks.get(*id).expect("key").expose()).collect();
    // The marker round-trips, so the search below is not vacuous.
    let f = camvault_tests::all_frames(&store, "cam-x");
    assert!(contains(&f[0].payload, MARKER));
    let files = vfs.files().into_iter().filter_map(|p| vfs.contents(&p).map(|c| (p.display().to_string(), c))).collect();
    assert_clean(files, &keys);
}

fn walk(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).expect("read")));
        }
    }
}

#[test]
fn real_file_system_keeps_no_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = StoreConfig::new(dir.path().join("data"));
    let store = Store::open(cfg.clone()).expect("open");
    let ids = write_marked(&store);
    let kek = Arc::new(FileKekProvider::open(Arc::new(StdVfs), &cfg.kek_dir).expect("kek"));
    let ks = KeyStore::open(Arc::new(StdVfs) as Arc<dyn Vfs>, &cfg.key_dir, kek, 0, false).expect("keys");
    let keys: Vec<[u8; 32]> = ids.iter().map(|(_, id)| *ks.get(*id).expect("key").expose()).collect();
    let mut files = Vec::new();
    walk(dir.path(), &mut files);
    assert_clean(files, &keys);
}
