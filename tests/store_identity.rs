//! The store's identity, locks and file modes on the real file system: a root opened with the
//! wrong key directory is refused and nothing is created or destroyed; two processes cannot
//! open one store; every file the engine writes is the owner's alone; offline scrub writes
//! nothing and refuses beside a running store.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use camvault_tests::{payload, FRAME_US};
use storage_core::{Clock, Codec, Error, FlushPolicy, FrameIn, Store, StoreConfig, SystemClock};

/// A production-shaped layout: segments under `data`, keys and KEKs on "another volume".
fn layout(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir.join("data"));
    c.key_dir = dir.join("keys-volume/keys");
    c.kek_dir = dir.join("keys-volume/kek");
    c.flush = FlushPolicy::OsWriteBack;
    c.sweep_interval = None;
    c
}

fn record(store: &Store, camera: &str, frames: u64) -> i64 {
    let t0 = SystemClock.now_us() - 60_000_000;
    let mut s = store.open_stream(camera, Codec::H264, b"cfg").expect("stream");
    for n in 0..frames {
        let key = n.is_multiple_of(25);
        s.append(FrameIn { ts_us: t0 + n as i64 * FRAME_US, pts_90k: None, key, payload: &payload(camera, n, key) }).expect("append");
    }
    s.close().expect("close");
    t0
}

/// Every file under `dir`, with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let mode = e.metadata().expect("metadata").permissions().mode() & 0o7777;
            if p.is_dir() {
                out.push((p.clone(), Vec::new(), mode));
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).expect("read"), mode));
            }
        }
    }
    out.sort();
    out
}

/// Finding: `camvault scrub --data DIR` (default key paths, with key_dir on another volume)
/// created a new key store under DIR/keys and destroyed every KEK, including the real one.
#[test]
fn a_maintenance_open_with_default_key_paths_destroys_no_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = layout(dir.path());
    let store = Store::open(cfg.clone()).expect("open");
    let t0 = record(&store, "cam-1", 100);
    drop(store);
    let before = snapshot(dir.path());
    // Every wrong pairing a typo or a forgotten key_dir gives: the default key paths, another
    // store's key directory, a key directory that does not exist.
    let other = tempfile::tempdir().expect("tempdir");
    let other_cfg = layout(other.path());
    drop(Store::open(other_cfg.clone()).expect("second store"));
    let mut wrong = Vec::new();
    wrong.push(StoreConfig::new(&cfg.root));
    let mut c = cfg.clone();
    c.key_dir = other_cfg.key_dir.clone();
    wrong.push(c);
    let mut c = cfg.clone();
    c.key_dir = dir.path().join("nowhere/keys");
    wrong.push(c);
    let mut c = cfg.clone();
    c.kek_dir = other_cfg.kek_dir.clone();
    wrong.push(c);
    for w in wrong {
        let err = Store::open(w.clone()).map(|_| ()).expect_err("a mismatched pairing is refused");
        assert!(matches!(err, Error::Identity(_)), "{err}");
        let msg = err.to_string();
        assert!(!msg.contains("initialis"), "{msg}");
        assert_eq!(
            snapshot(dir.path()).into_iter().filter(|(p, _, _)| !p.ends_with("LOCK")).collect::<Vec<_>>(),
            before.iter().filter(|(p, _, _)| !p.ends_with("LOCK")).cloned().collect::<Vec<_>>(),
            "refused open of {:?} changed a file",
            w.key_dir
        );
    }
    // The right pairing still opens and every frame reads back.
    let store = Store::open(cfg).expect("reopen");
    assert_eq!(camvault_tests::frames(&store, "cam-1", t0, t0 + 100 * FRAME_US).len(), 100);
}

/// Finding: KEK files, the key store, the signing key were created 0644 under the usual umask.
#[test]
fn key_files_are_created_for_their_owner_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = layout(dir.path());
    let store = Store::open(cfg.clone()).expect("open");
    record(&store, "cam-1", 60);
    store.audit_checkpoint().expect("checkpoint");
    drop(store);
    let files = snapshot(dir.path());
    assert!(files.iter().any(|(p, _, _)| p.to_string_lossy().contains("kek-")), "a KEK file exists");
    // The engine created every directory below the temporary one, so all of them count.
    for (p, _, mode) in &files {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}, want {want:o}", p.display());
    }
}

/// A key file another user can read is refused at open, as ssh refuses such a private key,
/// with the command that fixes it.
#[test]
fn a_world_readable_key_file_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = layout(dir.path());
    drop(Store::open(cfg.clone()).expect("open"));
    for name in ["kek", "keys"] {
        let d = dir.path().join("keys-volume").join(name);
        let victim = std::fs::read_dir(&d).expect("dir").flatten().map(|e| e.path()).find(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n.starts_with("kek-") || n.starts_with("keystore-")
        });
        let victim = victim.expect("a key file");
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Store::open(cfg.clone()).map(|_| ()).expect_err("refused");
        assert!(matches!(err, Error::Permissions { .. }), "{err}");
        assert!(err.to_string().contains(&format!("chmod 600 {}", victim.display())), "{err}");
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).expect("chmod back");
        drop(Store::open(cfg.clone()).expect("opens once fixed"));
    }
}

/// Finding: nothing stopped two processes opening one store.
#[test]
fn two_writers_cannot_open_one_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = layout(dir.path());
    let store = Store::open(cfg.clone()).expect("open");
    let err = Store::open(cfg.clone()).map(|_| ()).expect_err("second writer");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    // Another root pointed at the same key directory is refused too.
    let mut c = cfg.clone();
    c.root = dir.path().join("data2");
    assert!(Store::open(c).is_err());
    drop(store);
    drop(Store::open(cfg).expect("opens once the first is closed"));
}

/// Finding: scrub opened a read-write store (re-sealing a live server's open segments).
/// Offline scrub writes nothing, needs no keys, and refuses beside a running store.
#[test]
fn offline_scrub_writes_nothing_and_refuses_beside_a_running_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = layout(dir.path());
    let store = Store::open(cfg.clone()).expect("open");
    record(&store, "cam-1", 100);
    let err = storage_core::offline::scrub(&cfg.root).expect_err("refused while the store is open");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(store);
    let before = snapshot(dir.path());
    let found = storage_core::offline::scrub(&cfg.root).expect("scrub");
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(snapshot(dir.path()), before, "scrub changed nothing");
    // Damage is found, without keys.
    let seg = before.iter().find(|(p, _, _)| p.extension().is_some_and(|e| e == "seg")).expect("segment").0.clone();
    let mut bytes = std::fs::read(&seg).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&seg, &bytes).expect("write");
    let found = storage_core::offline::scrub(&cfg.root).expect("scrub");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].path, seg);
    // A directory that is not a store's root.
    assert!(matches!(storage_core::offline::scrub(&dir.path().join("keys-volume")), Err(Error::Identity(_))));
}
